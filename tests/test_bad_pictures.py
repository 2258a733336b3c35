"""Pictures that could crash dream or exhaust the machine: bombs, oversized work, 16-bit and float, odd modes."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written
from dreamcli.errors import InputError
from dreamcli.io.images import PictureTooLarge, load_rgb, open_image, to_8bit, to_rgb
from image_task_helpers import assert_refused, save, texture
from test_tune import subject_images

MID = 128 * 257  # a 16-bit level that is exactly 8-bit 128


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring width x height 1-bit pixels, with one row of data: ~100 bytes on disk.

    Decoding it would allocate width x height bytes; every reader must refuse it from the header.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + (width + 7) // 8), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b""))
    return path


def grey16(path: Path, size=(48, 32), value: int = MID) -> Path:
    """A 16-bit grey PNG (Pillow mode I;16) of one level."""
    Image.fromarray(np.full(size[::-1], value, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


# ---- 1. decompression bombs, in every command that opens a picture ----

@pytest.fixture
def run_with(cli, tiny, tmp_path):
    """Run one command with `picture` in the place the command reads a picture: (result, outdir)."""
    outdir = tmp_path / "out"
    good = save(texture(48, 32), tmp_path / "good.png")
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    good_mask = save(mask, tmp_path / "mask.png")
    model = ["-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q"]

    def folder_with(picture: Path, name: str) -> Path:
        folder = subject_images(tmp_path / name)
        (folder / picture.name).write_bytes(picture.read_bytes())
        return folder

    commands = {
        "inpaint": lambda p: cli("inpaint", p, "x", "--mask", good_mask, *model),
        "inpaint --mask": lambda p: cli("inpaint", good, "x", "--mask", p, *model),
        "outpaint": lambda p: cli("outpaint", p, "x", "--right", 8, *model),
        "colorize": lambda p: cli("colorize", p, *model),
        "upscale": lambda p: cli("upscale", p, "--scale", 2, "--strength", 0.5, *model),
        "img2img": lambda p: cli("img2img", p, "x", "--strength", 0.5, *model),
        "restore": lambda p: cli("restore", p, "--strength", 0.5, *model),
        "info": lambda p: cli("info", p),
        "gen --from": lambda p: cli("gen", "--from", p, *model),
        "tune --images": lambda p: cli("tune", "-m", tiny["sd1"], "--images", folder_with(p, "subject"),
                                       "--class", "shape", "-o", outdir, "--device", "cpu"),
        "tune --class-dir": lambda p: cli("tune", "-m", tiny["sd1"], "--images", subject_images(tmp_path / "s"),
                                          "--class-dir", folder_with(p, "class"), "--class", "shape",
                                          "-o", outdir, "--device", "cpu"),
    }

    def run(command: str, picture: Path):
        return commands[command](picture), outdir

    return run


COMMANDS = ["inpaint", "inpaint --mask", "outpaint", "colorize", "upscale", "img2img", "restore", "info", "gen --from",
            "tune --images", "tune --class-dir"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_decompression_bomb_is_one_line_and_exit_2_in_every_command(run_with, tmp_path, command):
    # 50000 x 50000 in a ~100-byte file: past Pillow's own guard, so its error is caught and reworded.
    bomb = bomb_png(tmp_path / "bomb.png", 50_000, 50_000)
    assert bomb.stat().st_size < 200
    result, outdir = run_with(command, bomb)
    assert_refused(result, outdir, "bomb.png", "2500 megapixels", "decompression bomb")
    assert not outdir.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_picture_over_our_limit_is_refused_from_its_header(run_with, tmp_path, command):
    # 6000 x 6000 is under Pillow's guard: only dream's limit (16 MP by default) stands before decoding.
    bomb = bomb_png(tmp_path / "big.png", 6000, 6000)
    result, outdir = run_with(command, bomb)
    assert_refused(result, outdir, "big.png", "6000x6000", "over the limit of 16.8")
    assert not outdir.exists()


def test_the_header_is_checked_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    bomb = bomb_png(tmp_path / "big.png", 6000, 6000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a picture over the limit"))
    with pytest.raises(PictureTooLarge, match="6000x6000"):
        open_image(bomb)


def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch):
    picture = save(texture(40, 30), tmp_path / "p.png")
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "1199")
    with pytest.raises(PictureTooLarge, match=r"40x30.*DREAMCLI_MAX_PIXELS"):
        open_image(picture)
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "1200")
    assert open_image(picture).size == (40, 30)
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="give a positive whole number"):
        open_image(picture)


def test_a_library_caller_handing_a_large_pil_image_is_refused(tiny, monkeypatch):
    from dreamcli.requests import ColorizeRequest, ModelOptions
    from dreamcli.tasks import colorize

    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="the image is 40x30"):
        colorize(ColorizeRequest(texture(40, 30), ModelOptions(str(tiny["sd1"])), num_inference_steps=2))


# ---- 2. work that would not fit is refused before it is allocated ----

@pytest.mark.parametrize(
    "command, args, fragments",
    [
        ("colorize", ["-W", 64, "-H", 64], ["working size", "64x64", "DREAMCLI_MAX_PIXELS"]),
        ("colorize", ["-W", 8000], ["working size", "8000x"]),  # one side only: the other follows the picture
        ("inpaint", ["-W", 64, "-H", 64], ["working size", "64x64"]),
        ("inpaint", ["-H", 800], ["working size", "x800"]),
        ("outpaint", ["--right", 64], ["80x16", "over the limit", "DREAMCLI_MAX_PIXELS", "--max-pixels"]),
        ("upscale", ["--scale", 4], ["64x64", "over the limit", "DREAMCLI_MAX_PIXELS"]),
    ],
)
def test_oversized_work_is_refused_with_a_small_limit(cli, tiny, tmp_path, monkeypatch, command, args, fragments):
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "600")
    picture = save(texture(16, 16), tmp_path / "small.png")  # 256 px: the input itself is allowed
    mask = save(Image.new("L", (16, 16), 255), tmp_path / "m.png")
    outdir = tmp_path / "out"
    extra = {"inpaint": ["--mask", mask], "upscale": ["--strength", 0.5]}.get(command, [])
    prompt = ["x"] if command in ("inpaint", "outpaint") else []
    result = cli(command, picture, *prompt, *extra, *args, "-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q")
    assert_refused(result, outdir, *fragments)


def test_the_native_working_size_of_colorize_and_inpaint_is_checked_too(tiny, monkeypatch):
    """Without -W/-H the size is the model's own area (32x32 here): over a 600 px limit, refused."""
    from dreamcli.requests import ColorizeRequest, InpaintRequest, ModelOptions
    from dreamcli.tasks import colorize, inpaint

    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "600")
    model = ModelOptions(str(tiny["sd1"]))
    with pytest.raises(InputError, match="working size is 32x32"):
        colorize(ColorizeRequest(texture(16, 16), model, num_inference_steps=2))
    with pytest.raises(InputError, match="working size is 32x32"):
        inpaint(InpaintRequest(texture(16, 16), Image.new("L", (16, 16), 255), "x", model, num_inference_steps=2))


def test_the_max_pixels_flag_wins_over_the_environment(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "600")
    picture = save(texture(16, 16), tmp_path / "small.png")
    outdir = tmp_path / "out"
    result = cli("upscale", picture, "--scale", 2, "--max-pixels", 1024, "-m", tiny["sd1"], "--steps", 2,
                 "--strength", 0.5, "-o", outdir, "-q")
    assert result.exit_code == 0, result.stderr
    assert Image.open(written(outdir)[0]).size == (32, 32)


def test_colorize_recolours_in_bands_with_the_same_result(monkeypatch):
    from dreamcli.imageops import color

    grey = texture(40, 37).convert("L")
    colour = texture(20, 18, seed=3)
    whole = color.recolor(grey, colour)
    monkeypatch.setattr(color, "BAND_ROWS", 8)
    assert np.array_equal(np.asarray(color.recolor(grey, colour)), np.asarray(whole))


# ---- 3. 16-bit and float pictures are scaled, not clipped ----

@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I;16", [0, MID, 65535], [0, 128, 255]),
        ("I", [0, MID, 65535], [0, 128, 255]),  # 16-bit range in a 32-bit picture (older Pillow's 16-bit PNG)
        ("I", [0, 128, 255], [0, 128, 255]),  # an 8-bit picture widened to I keeps its levels
        ("I", [-100, 0, 100], [0, 128, 255]),  # no declared range: stretched
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # floats in 0-1
        ("F", [0.0, 128.0, 255.0], [0, 128, 255]),
        ("F", [float("nan"), 0.5, float("inf")], [0, 128, 0]),
    ],
)
def test_wide_samples_are_scaled_to_8_bits(mode, values, expected):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.array([values], dtype))
    assert image.mode == mode
    out = to_8bit(image)
    assert out.mode == "L"
    assert np.asarray(out)[0].tolist() == expected
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


def test_a_16_bit_grey_photo_loads_mid_grey_not_white(tmp_path):
    rgb = load_rgb(grey16(tmp_path / "g16.png"))
    assert rgb.mode == "RGB" and np.all(np.asarray(rgb) == 128)


def test_tune_reads_a_16_bit_training_image_as_mid_grey(tmp_path):
    from dreamcli.training.images import load_training_image, training_tensor
    from dreamcli.training.inputs import read_sizes

    path = grey16(tmp_path / "g16.png", size=(40, 30))
    assert np.all(np.asarray(load_training_image(path)) == 128)
    assert abs(float(training_tensor(path, 16).mean())) < 0.01  # 128/127.5 - 1: grey, not +1 (white)
    assert read_sizes([path]) == ({path: (40, 30)}, [])


def test_inpaint_keeps_a_16_bit_pictures_pixels_mid_grey(cli, tiny, tmp_path):
    picture = grey16(tmp_path / "g16.png")
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    mask = save(mask, tmp_path / "mask.png")
    outdir = tmp_path / "out"
    result = cli("inpaint", picture, "x", "--mask", mask, "--mask-blur", 0, "-m", tiny["sd1"], "--steps", 2,
                 "-o", outdir, "-q", "-s", 1)
    assert result.exit_code == 0, result.stderr
    out = pixels(written(outdir)[0])
    assert np.all(out[:8] == 128) and np.all(out[:, :16] == 128)  # outside the mask: kept, and grey


def test_colorize_keeps_a_16_bit_pictures_luma(cli, tiny, tmp_path):
    from dreamcli.imageops.color import luma

    picture = grey16(tmp_path / "g16.png")
    outdir = tmp_path / "out"
    result = cli("colorize", picture, "-m", tiny["sd1"], "--steps", 4, "-o", outdir, "-q", "-s", 2)
    assert result.exit_code == 0, result.stderr
    y = luma(Image.open(written(outdir)[0]))
    assert np.abs(y - 128).max() <= 1  # was 255: the 16-bit levels were clipped


def test_upscale_of_a_16_bit_picture_is_grey_not_white(cli, tiny, tmp_path):
    picture = grey16(tmp_path / "g16.png", size=(16, 16))
    outdir = tmp_path / "out"
    result = cli("upscale", picture, "--scale", 2, "-m", tiny["sd1"], "--steps", 2, "--strength", 0.5,
                 "-o", outdir, "-q", "-s", 1)
    assert result.exit_code == 0, result.stderr
    out = Image.open(written(outdir)[0])
    shrunk = np.asarray(out.convert("L").resize((16, 16), Image.Resampling.BOX), np.float64)
    # Back-projection makes the output shrink back to the input: mid-grey (was 255: clipped to white).
    assert abs(shrunk.mean() - 128) < 1.5 and np.abs(shrunk - 128).max() <= 4


# ---- neighbours: odd masks, modes, EXIF, formats, damaged files ----

def _square_mask(mode_maker) -> Image.Image:
    levels = np.zeros((16, 24), np.uint8)
    levels[4:12, 8:16] = 255
    return mode_maker(levels)


@pytest.mark.parametrize(
    "maker",
    [
        lambda a: Image.fromarray(a, "L").convert("1"),
        lambda a: Image.fromarray(a, "L").convert("P"),
        lambda a: Image.fromarray(a, "L").convert("RGB"),
        lambda a: Image.fromarray(a.astype(np.uint16) * 257),  # 16-bit grey: was clipped, every non-zero -> 255
        lambda a: Image.fromarray(a.astype(np.float32) / 255),  # float 0-1: was near-black everywhere
        lambda a: Image.merge("LA", [Image.new("L", (24, 16), 0), Image.fromarray(a, "L")]),  # strokes on nothing
    ],
    ids=["1-bit", "palette", "rgb", "16-bit", "float", "alpha"],
)
def test_masks_of_any_mode_give_the_same_levels(maker):
    from dreamcli.imageops.masks import mask_levels

    expected = np.zeros((16, 24), np.uint8)
    expected[4:12, 8:16] = 255
    assert np.array_equal(np.asarray(mask_levels(_square_mask(maker))), expected)


def test_a_half_grey_16_bit_mask_stays_half():
    from dreamcli.imageops.masks import mask_levels

    assert np.asarray(mask_levels(Image.fromarray(np.full((4, 4), MID, np.uint16)))).max() == 128


def test_a_palette_picture_with_a_transparent_colour_is_laid_on_white():
    image = Image.new("P", (4, 2), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((3, 1), 1)
    image.info["transparency"] = 0
    out = np.asarray(to_rgb(image))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 3].tolist() == [200, 10, 10]


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    red = np.asarray(load_rgb(path)).astype(int)
    assert red[..., 0].min() > 200 and red[..., 1:].max() < 60


def _with_orientation(path: Path, value) -> Path:
    exif = Image.Exif()
    exif[0x0112] = value
    texture(24, 16).save(path, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("value", range(1, 9))
def test_exif_orientation_turns_the_picture_upright_as_viewers_do(tmp_path, value):
    from PIL import ImageOps

    path = _with_orientation(tmp_path / "r.png", value)
    expected = ImageOps.exif_transpose(Image.open(path))
    assert np.array_equal(np.asarray(open_image(path)), np.asarray(expected))
    assert open_image(path).size == ((16, 24) if value >= 5 else (24, 16))


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_an_absurd_exif_orientation_leaves_the_picture_as_stored(tmp_path, value):
    image = open_image(_with_orientation(tmp_path / "odd.png", value))
    assert np.array_equal(np.asarray(image), np.asarray(texture(24, 16)))


def test_a_damaged_exif_block_is_ignored(tmp_path):
    path = tmp_path / "e.png"
    texture(24, 16).save(path, exif=b"Exif\0\0@M\0*\0\0\0\x08garbage")
    assert open_image(path).size == (24, 16)


def test_an_eps_file_is_refused_without_running_ghostscript(tmp_path):
    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InputError, match="not an image dream can read"):
        open_image(eps)


def test_a_text_chunk_that_inflates_to_gigabytes_is_refused(tmp_path):
    path = save(texture(8, 8), tmp_path / "t.png")
    data = path.read_bytes()
    text = _chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (64 << 20), 9))
    path.write_bytes(data[:33] + text + data[33:])  # after the 8-byte signature and the 25-byte IHDR
    with pytest.raises(InputError, match="cannot read"):
        open_image(path)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    texture(24, 16).save(buffer, fmt, **({"exif": exif.tobytes()} if fmt != "GIF" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF"])
def test_damaged_files_open_or_give_an_input_error_never_another_exception(tmp_path, fmt):
    rng = random.Random(fmt)
    original = _encoded(fmt)
    path = tmp_path / f"d.{fmt.lower()}"
    refused = 0
    for _ in range(60):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            try:
                to_rgb(open_image(path))
            except InputError:
                refused += 1
        assert not shown, [str(w.message) for w in shown]  # a warning is a second line on stderr
    assert refused > 0  # the damage was real

