"""dream inpaint: the mask's outside kept bit for bit, its inside repainted; bad masks refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written
from image_task_helpers import assert_refused, demo_model, save, texture


@pytest.fixture
def picture(tmp_path):
    """A 48x32 textured picture and a mask with a white square in it."""
    image = save(texture(48, 32), tmp_path / "in.png")
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    return image, save(mask, tmp_path / "mask.png")


@pytest.fixture
def inpaint(cli, tiny, tmp_path):
    """`dream inpaint` on the tiny SD1 model with 2 steps into a fresh folder: (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args, model=None):
        return cli("inpaint", *args, "-m", model or tiny["sd1"], "--steps", 2, "-o", outdir, "-q", "-s", 7), outdir

    return run


def feathered(mask_path, blur):
    from dreamcli.imageops.masks import feather, mask_levels

    return np.asarray(feather(mask_levels(Image.open(mask_path)), blur))


def test_outside_the_feathered_mask_is_kept_exactly_and_inside_is_repainted(inpaint, picture):
    image, mask = picture
    result, outdir = inpaint(image, "a red circle", "--mask", mask, "--mask-blur", 2)
    assert result.exit_code == 0, result.stderr
    (path,) = written(outdir)
    assert result.stdout.strip() == str(path)
    out, before = pixels(path), pixels(image)
    assert out.shape == before.shape
    soft = feathered(mask, 2)
    assert np.array_equal(out[soft == 0], before[soft == 0])
    inside = soft == 255
    assert np.abs(out[inside] - before[inside]).mean() > 10


def test_metadata_records_the_task_and_reads_back_with_dream_info(inpaint, picture, cli):
    image, mask = picture
    result, outdir = inpaint(image, "a red circle", "--mask", mask, "--json", "--strength", "0.9")
    line = json.loads(result.stdout)
    assert line["task"] == "inpaint" and line["seed"] == 7 and line["strength"] == 0.9
    shown = cli("info", "--json", line["path"])
    meta = json.loads(shown.stdout)
    assert meta["dreamcli"]["request"]["mask"].endswith("mask.png")
    assert meta["dreamcli"]["request"]["mask_blur"] == 4.0
    assert meta["a1111"]["Seed"] == "7" and meta["a1111"]["prompt"] == "a red circle"
    assert meta["a1111"]["Denoising strength"] == "0.9" and meta["a1111"]["Mask blur"] == "4"


def test_grey_image_and_mask_of_the_same_aspect_are_converted_with_a_note(inpaint, picture, tmp_path):
    image, mask = picture
    grey = save(Image.open(image).convert("L"), tmp_path / "grey.png")
    small = save(Image.open(mask).resize((24, 16)), tmp_path / "small-mask.png")
    result, outdir = inpaint(grey, "a red circle", "--mask", small)
    assert result.exit_code == 0, result.stderr
    assert "resized" in result.stderr
    (path,) = written(outdir)
    assert Image.open(path).mode == "RGB" and Image.open(path).size == (48, 32)


@pytest.mark.parametrize(
    "make_mask, fragments",
    [
        (lambda: Image.new("L", (32, 32), 255), ["aspect ratios differ", "32x32", "48x32"]),
        (lambda: Image.new("L", (48, 32), 0), ["all black", "nothing to repaint", "--invert-mask"]),
        (lambda: Image.new("L", (48, 32), 255), ["all black"]),  # inverted: nothing white is left
    ],
)
def test_bad_masks_are_refused(inpaint, picture, tmp_path, make_mask, fragments):
    image, _ = picture
    mask = save(make_mask(), tmp_path / "bad-mask.png")
    extra = ["--invert-mask"] if make_mask().getextrema() == (255, 255) and "aspect" not in fragments[0] else []
    result, outdir = inpaint(image, "x", "--mask", mask, *extra)
    assert_refused(result, outdir, *fragments)


def test_missing_and_unreadable_inputs_are_refused(inpaint, picture, tmp_path):
    image, mask = picture
    result, outdir = inpaint(tmp_path / "nope.png", "x", "--mask", mask)
    assert_refused(result, outdir, "nope.png", "does not exist")
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    result, outdir = inpaint(image, "x", "--mask", fake)
    assert_refused(result, outdir, "fake.png", "not an image")
    result, outdir = inpaint(image, "x")
    assert_refused(result, outdir, "no mask", "--mask")
    result, outdir = inpaint(image, "x", "--mask", mask, "--strength", "1.5")
    assert_refused(result, outdir, "strength 1.5")


def test_library_function_returns_results_and_prints_nothing(tiny, picture, capsys):
    from dreamcli.requests import InpaintRequest, ModelOptions
    from dreamcli.tasks import inpaint

    image, mask = picture
    request = InpaintRequest(Image.open(image), str(mask), "a red circle", ModelOptions(str(tiny["sd1"])),
                             num_inference_steps=2, num_images=2, seed=3, mask_blur=0)
    results = inpaint(request)
    assert [r.seed for r in results] == [3, 4]
    assert results[0].record["request"]["image"] == "<in-memory image>"
    outside = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(np.asarray(results[1].image)[outside], np.asarray(Image.open(image))[outside])
    assert capsys.readouterr() == ("", "")


def test_a_preset_inpaint_model_is_used_unless_a_model_is_named(tiny, tmp_path, monkeypatch):
    from dreamcli.cli.image_common import task_settings

    presets = tmp_path / "home" / "presets"
    presets.mkdir(parents=True)
    (presets / "mine.toml").write_text(f'model = "{tiny["sd1"]}"\ninpaint_model = "{tmp_path / "inpaint"}"\n')
    monkeypatch.setenv("DREAMCLI_HOME", str(tmp_path / "home"))
    settings, _ = task_settings({"preset": "mine"}, "inpaint_model")
    assert settings["model"] == str(tmp_path / "inpaint")
    settings, _ = task_settings({"preset": "mine", "model": str(tiny["sd1"])}, "inpaint_model")
    assert settings["model"] == str(tiny["sd1"])


def test_a_nine_channel_inpainting_checkpoint_runs(inpaint, picture, tiny, tmp_path):
    """A dedicated inpainting UNet (latents + mask + masked-image latents in) loads and keeps the outside."""
    import torch
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "tiny-inpainting"
    shutil.copytree(tiny["sd1"], folder)
    config = dict(UNet2DConditionModel.load_config(folder / "unet"), in_channels=9)
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    image, mask = picture
    result, outdir = inpaint(image, "a red circle", "--mask", mask, "--mask-blur", 0, model=folder)
    assert result.exit_code == 0, result.stderr
    out, before = pixels(written(outdir)[0]), pixels(image)
    outside = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(out[outside], before[outside])


def test_demo_model_paints_a_red_circle_into_a_blue_picture(tmp_path):
    """Meaning: the masked square of a plain blue picture becomes mostly red."""
    from dreamcli.demo.world import COLORS, nearest_color
    from dreamcli.requests import InpaintRequest, ModelOptions
    from dreamcli.tasks import inpaint

    folder = demo_model()
    blue = Image.new("RGB", (128, 128), COLORS["blue"])
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (36, 36, 92, 92))
    # At the demo preset's guidance (2.0), asking for the centre, where the mask is (measured at
    # shipping: 89 %, 91 %, 90 % red for seeds 0-2).
    prompt = "a large red circle in the center on a blue background"
    shares = []
    for seed in (0, 1, 2):
        request = InpaintRequest(blue, mask, prompt, ModelOptions(str(folder)), num_inference_steps=20,
                                 guidance_scale=2.0, seed=seed)
        out = np.asarray(inpaint(request)[0].image)
        names = [nearest_color(px) for px in out[40:88, 40:88].reshape(-1, 3)]
        shares.append(names.count("red") / len(names))
    assert min(shares) > 0.6, f"red shares of the masked square: {shares}"
