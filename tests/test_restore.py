"""dream restore: the JPEG projection's guarantees (pure numpy), and the command's sizes, notes, errors and records."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import written
from dreamcli.imageops import jpeg
from image_task_helpers import assert_refused, demo_model, psnr, save, texture


def shapes(seed: int, size: int = 128) -> Image.Image:
    """A demo-world picture: flat colours and sharp edges, where JPEG rings the most."""
    from dreamcli.demo.world import draw, random_scene

    rng = random.Random(seed)
    return draw(random_scene(rng), size, rng)


def as_jpeg(image: Image.Image, **options) -> io.BytesIO:
    """The picture saved as a JPEG in memory (Pillow/libjpeg), rewound."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    buffer.seek(0)
    return buffer


def coefficients_in(planes, constraint) -> list[np.ndarray]:
    """Each plane's block DCT coefficients as the constraint sees them (downsampled to its samples)."""
    out = []
    for values, plane in zip(planes, constraint.planes, strict=True):
        (fy, fx), (rows, columns) = plane.factor, plane.padded
        samples = jpeg.box_down(jpeg.pad_edge(values, rows * fy, columns * fx), fy, fx)
        out.append(jpeg.block_dct(samples - 128.0))
    return out


def quantised(planes, tables, factors) -> jpeg.JpegConstraint:
    """What an ideal (float) JPEG encoder keeps of full-resolution planes: their bins, as a constraint."""
    height, width = planes[0].shape
    out = []
    for values, table, (fy, fx) in zip(planes, tables, factors, strict=True):
        rows, columns = -(-height // fy), -(-width // fx)
        brows, bcols = -(-rows // 8), -(-columns // 8)
        samples = jpeg.box_down(jpeg.pad_edge(values, brows * 8 * fy, bcols * 8 * fx), fy, fx)
        q = np.round(jpeg.block_dct(samples - 128.0) / table)
        out.append(jpeg.Plane((fy, fx), (rows, columns), table, (q - 0.5) * table, (q + 0.5) * table))
    return jpeg.JpegConstraint((width, height), 1, tuple(out))


# ---- the projection, in numpy ----

def test_the_dct_is_jpegs_orthonormal_one():
    assert np.allclose(jpeg.DCT @ jpeg.DCT.T, np.eye(8))
    flat = np.full((8, 8), 10.0)
    coefficients = jpeg.block_dct(flat)[0, 0]
    assert coefficients[0, 0] == pytest.approx(80.0)  # JPEG's DC: 8 x the block's mean
    assert np.abs(coefficients.flatten()[1:]).max() < 1e-9
    plane = np.random.default_rng(0).uniform(0, 255, (16, 24))
    assert np.allclose(jpeg.block_idct(jpeg.block_dct(plane)), plane)


@pytest.mark.parametrize("factors", [[(1, 1)] * 3, [(1, 1), (2, 2), (2, 2)], [(1, 1), (1, 2), (1, 2)]],
                         ids=["4:4:4", "4:2:0", "4:2:2"])
def test_projection_never_moves_a_guess_away_from_any_picture_in_the_set(factors):
    """Exact property: the truth is in the set, so every guess ends no further from it (and in the set)."""
    rng = np.random.default_rng(1)
    truth = jpeg.jpeg_planes(texture(48, 32))  # 48 x 32: whole blocks at every sampling
    tables = [np.full((8, 8), 30.0) + np.arange(64).reshape(8, 8)] * 3
    constraint = quantised(truth, tables, factors)
    for trial in range(20):
        noise = rng.normal(0, 5 + 10 * trial, (3, 32, 48))
        guess = [t + n for t, n in zip(truth, noise, strict=True)]
        projected = jpeg.project_planes(guess, constraint)
        before = sum(np.sum((g - t) ** 2) for g, t in zip(guess, truth, strict=True))
        after = sum(np.sum((p - t) ** 2) for p, t in zip(projected, truth, strict=True))
        assert after <= before + 1e-6
        for c, plane in zip(coefficients_in(projected, constraint), constraint.planes, strict=True):
            assert np.all(c >= plane.low - 1e-6) and np.all(c <= plane.high + 1e-6)
        again = jpeg.project_planes(projected, constraint)  # a projection: a second one changes nothing
        assert max(np.abs(a - p).max() for a, p in zip(again, projected, strict=True)) < 1e-6


@pytest.mark.parametrize("subsampling", [0, 2], ids=["4:4:4", "4:2:0"])
def test_the_bins_read_from_a_file_hold_the_clean_picture_and_the_files_own_decoding(subsampling):
    clean = shapes(3)
    file = as_jpeg(clean, quality=10, subsampling=subsampling)
    constraint = jpeg.read_constraint(file)
    assert constraint.subsampling == ("4:4:4", "4:2:0")[subsampling // 2]
    for picture, least in ((clean, 0.999), (Image.open(file).convert("RGB"), 0.9999)):
        for c, plane in zip(coefficients_in(jpeg.jpeg_planes(picture), constraint), constraint.planes, strict=True):
            assert np.mean((c >= plane.low) & (c <= plane.high)) >= least
    decoded = Image.open(file).convert("RGB")
    moved = np.abs(np.asarray(jpeg.project(decoded, constraint), float) - np.asarray(decoded, float))
    assert moved.mean() < 0.5  # the file's own decoding is (nearly) a fixed point


@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["4:4:4", "4:2:2", "4:2:0"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_projected_guess_is_closer_to_the_truth_and_re_encodes_to_the_same_jpeg(subsampling, seed):
    clean = shapes(seed)
    file = as_jpeg(clean, quality=10, subsampling=subsampling)
    constraint = jpeg.read_constraint(file)
    decoded = Image.open(file).convert("RGB")
    guess = decoded.filter(ImageFilter.GaussianBlur(1.5))  # a poor guess: every edge smeared
    # In exact arithmetic the projection (in RGB, PSNR's metric) never moves away from any picture in the set.
    exact = jpeg.project_rgb(np.asarray(guess, np.float32), constraint)
    truth = np.asarray(clean, np.float64)
    assert np.sum((exact - truth) ** 2) <= np.sum((np.asarray(guess, np.float64) - truth) ** 2)
    # The 8-bit result pays for rounding and for keeping coefficients off the bins' edges: at most 0.01 dB.
    projected = jpeg.project(guess, constraint)
    assert projected.size == clean.size and projected.mode == "RGB"
    assert psnr(clean, projected) >= psnr(clean, guess) - 0.01
    # Saved again with the file's own tables and sampling, the result gives the file's coefficients back.
    again = as_jpeg(projected, qtables=Image.open(file).quantization, subsampling=subsampling)
    first, second = constraint, jpeg.read_constraint(again)
    same = [np.mean(np.isclose(a.low + a.high, b.low + b.high)) for a, b in zip(first.planes, second.planes,
                                                                                strict=True)]
    assert min(same) >= 0.999, same
    pixels_same = np.mean(np.asarray(Image.open(again).convert("RGB")) == np.asarray(decoded))
    assert pixels_same >= 0.98


def test_grey_odd_sized_and_rotated_jpegs(tmp_path):
    # Grey, 45 x 37 (blocks cut by the edge are left free): the result is grey and keeps the size.
    grey = texture(45, 37).convert("L")
    constraint = jpeg.read_constraint(as_jpeg(grey, quality=20))
    assert constraint.subsampling == "grey" and len(constraint.planes) == 1
    out = np.asarray(jpeg.project(grey.convert("RGB").filter(ImageFilter.BoxBlur(1)), constraint))
    assert out.shape == (37, 45, 3) and np.array_equal(out[..., 0], out[..., 1])
    # Stored sideways with EXIF orientation 6: blocks are in the stored orientation, the picture upright.
    stored = shapes(2).crop((0, 0, 128, 96))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=10, exif=exif)
    constraint = jpeg.read_constraint(path)
    assert constraint.orientation == 6 and constraint.size == (128, 96)
    upright = Image.open(path).transpose(Image.Transpose.ROTATE_270).convert("RGB")
    projected = jpeg.project(upright, constraint)
    assert projected.size == (96, 128)
    assert np.abs(np.asarray(projected, float) - np.asarray(upright, float)).mean() < 0.5


def test_files_without_a_jpeg_constraint_say_why(tmp_path):
    with pytest.raises(jpeg.NoConstraint, match="PNG is not a JPEG"):
        jpeg.read_constraint(save(texture(16, 16), tmp_path / "a.png"))
    with pytest.raises(jpeg.NoConstraint, match="CMYK"):
        jpeg.read_constraint(as_jpeg(texture(16, 16).convert("CMYK")))


# ---- the request ----

def test_strength_below_one_step_gets_a_longer_schedule_not_an_error():
    from dreamcli.errors import InputError
    from dreamcli.requests import ModelOptions, RestoreRequest

    model = ModelOptions("some-model")
    request = RestoreRequest("x.jpg", model, num_inference_steps=4)  # a turbo preset's 4 steps
    assert (request.strength, request.num_inference_steps, request.denoising_steps) == (0.05, 20, 1)
    kept = RestoreRequest("x.jpg", model, num_inference_steps=30, strength=0.1)
    assert (kept.num_inference_steps, kept.denoising_steps) == (30, 3)
    with pytest.raises(InputError, match="steps 4 x strength 1e-05 is less than one denoising step"):
        RestoreRequest("x.jpg", model, num_inference_steps=4, strength=1e-5)  # no schedule is that long


# ---- the command ----

@pytest.fixture
def restore(cli, tiny, tmp_path):
    """`dream restore` on the tiny SD1 model (32 px tiles): (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args):
        return cli("restore", *args, "-m", tiny["sd1"], "--steps", 4, "-o", outdir, "-s", 2), outdir

    return run


@pytest.fixture
def photo(tmp_path):
    """A 48 x 40 JPEG at quality 10 (4:2:0): larger than the tiny model's 32 px tiles."""
    path = tmp_path / "photo.jpg"
    shapes(5).resize((48, 40), Image.Resampling.LANCZOS).save(path, quality=10)
    return path


def test_a_jpeg_comes_back_its_size_and_consistent_with_its_file(restore, photo):
    """Even a random-weight model's proposal ends up re-encoding to the file's own coefficients."""
    result, outdir = restore(photo, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    out = Image.open(line["path"])
    assert out.size == (48, 40) and out.mode == "RGB"
    record = json.loads(out.info["dreamcli"])
    assert record["task"] == "restore" and line["task"] == "restore"
    assert record["jpeg"] == {"subsampling": "4:2:0"} and record["method"] == "img2img + jpeg projection"
    assert record["tiles"] == 4 and record["denoising_steps"] == 1
    assert record["request"]["num_inference_steps"] == 20  # 4 steps x 0.05 is no step: the schedule grew
    original = jpeg.read_constraint(photo)
    again = jpeg.read_constraint(as_jpeg(out.convert("RGB"), qtables=Image.open(photo).quantization, subsampling=2))
    for a, b in zip(original.planes, again.planes, strict=True):
        kept = np.isfinite(a.low)  # chroma blocks the picture's edge cuts are free: compare the others
        assert kept.mean() >= 2 / 3
        assert np.mean(np.isclose(a.low[kept] + a.high[kept], b.low[kept] + b.high[kept])) >= 0.99


def test_a_picture_that_is_not_a_jpeg_gets_the_proposal_and_a_note(restore, photo, tmp_path):
    png = save(shapes(6, 40), tmp_path / "clean.png")
    result, outdir = restore(photo, png)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and len(written(outdir)) == 2
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "clean.png" in notes[0] and "not a JPEG" in notes[0], result.stderr
    by_name = {json.loads(Image.open(p).info["dreamcli"])["source"]: Image.open(p) for p in written(outdir)}
    assert by_name["clean"].size == (40, 40)
    assert json.loads(by_name["clean"].info["dreamcli"])["jpeg"] is None


def test_bad_input_is_one_line_and_exit_2(restore, photo, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert_refused(*restore(bad), "notes.txt", "not an image")
    result, outdir = restore(photo, "--strength", "0")
    assert_refused(result, outdir, "strength 0")
    result, outdir = restore(photo, "--strength", "1.5")
    assert_refused(result, outdir, "strength 1.5")


def test_the_same_seed_restores_the_same_picture(restore, photo, tmp_path):
    first, outdir = restore(photo, "-q")
    second, _ = restore(photo, "-q")
    assert first.exit_code == second.exit_code == 0
    a, b = written(outdir)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert json.loads(Image.open(a).info["dreamcli"])["seed"] == 2


def test_a_tile_controlnet_is_fed_the_picture(tiny, photo, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from dreamcli.requests import ModelOptions, RestoreRequest
    from dreamcli.tasks.restore import restore

    unet = UNet2DConditionModel.from_pretrained(tiny["sd1"], subfolder="unet")
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))  # the tiny VAE shrinks 2x
    net.save_pretrained(tmp_path / "tile")
    request = RestoreRequest(str(photo), ModelOptions(str(tiny["sd1"])), controlnet=str(tmp_path / "tile"),
                             num_inference_steps=4, seed=0)
    (result,) = restore(request)
    assert result.record["pipeline"] == "StableDiffusionControlNetImg2ImgPipeline"
    assert result.image.size == (48, 40)


def test_demo_model_restores_jpeg_shapes_better_than_the_jpeg(tmp_path):
    """Meaning: on demo-world pictures at quality 10 the restoration is closer to the clean picture than the
    JPEG is, and the pixel reader still reads the same scene."""
    from dreamcli.demo.world import read
    from dreamcli.requests import ModelOptions, RestoreRequest
    from dreamcli.tasks.restore import restore

    model = ModelOptions(str(demo_model()))
    gains = []
    for seed in range(4):
        clean = shapes(10 + seed)
        path = tmp_path / f"{seed}.jpg"
        clean.save(path, quality=10)
        (result,) = restore(RestoreRequest(str(path), model, num_inference_steps=20, guidance_scale=2.0, seed=0))
        gains.append(psnr(clean, result.image) - psnr(clean, Image.open(path)))
        assert read(result.image) == read(clean)
    assert np.mean(gains) >= 0.5, gains
