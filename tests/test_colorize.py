"""dream colorize: luma kept within 1/255, colour added; the demo model gets the hues back."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
from PIL import Image

from conftest import written
from dreamcli.imageops.color import chroma, luma
from image_task_helpers import assert_refused, demo_model, save, texture


@pytest.fixture
def grey(tmp_path):
    """A 48x40 grey picture."""
    return save(texture(48, 40).convert("L"), tmp_path / "grey.png")


@pytest.fixture
def colorize(cli, tiny, tmp_path):
    """`dream colorize` on the tiny SD1 model, 4 steps: (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args, model=None):
        return cli("colorize", *args, "-m", model or tiny["sd1"], "--steps", 4, "-o", outdir, "-s", 2, "-q"), outdir

    return run


def test_luma_is_kept_and_chroma_added(colorize, grey):
    result, outdir = colorize(grey, "a garden", "--json")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    out = Image.open(line["path"])
    assert out.size == (48, 40) and out.mode == "RGB"
    assert np.abs(luma(out) - luma(Image.open(grey))).mean() <= 1.0
    assert np.abs(np.stack(chroma(out))).mean() > 1.0  # not grey any more
    record = json.loads(Image.open(line["path"]).info["dreamcli"])
    assert record["task"] == "colorize" and record["prompt_used"] == "a garden, a colorful photo"


def test_sepia_input_keeps_its_luma_not_its_tint(colorize, grey, tmp_path):
    g = np.asarray(Image.open(grey), np.float64)
    sepia = np.stack([g * 1.0, g * 0.85, g * 0.6], -1).clip(0, 255).astype(np.uint8)
    path = save(Image.fromarray(sepia, "RGB"), tmp_path / "sepia.jpg")
    result, outdir = colorize(path)
    assert result.exit_code == 0, result.stderr
    (out,) = written(outdir)
    assert np.abs(luma(Image.open(out)) - luma(Image.open(path).convert("L"))).mean() <= 1.0


def test_unreadable_image_and_bad_strength_are_refused(colorize, tmp_path, grey):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result, outdir = colorize(bad)
    assert_refused(result, outdir, "notes.txt", "not an image")
    result, outdir = colorize(grey, "--strength", "0")
    assert_refused(result, outdir, "strength 0")


def test_a_controlnet_named_by_the_preset_is_fed_the_grey_picture(tiny, grey, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from dreamcli.requests import ColorizeRequest, ModelOptions
    from dreamcli.tasks import colorize

    unet = UNet2DConditionModel.from_pretrained(tiny["sd1"], subfolder="unet")
    # One downsampling in the condition encoder: the tiny VAE shrinks by 2, not 8.
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    net.save_pretrained(tmp_path / "controlnet")
    request = ColorizeRequest(str(grey), ModelOptions(str(tiny["sd1"])), controlnet=str(tmp_path / "controlnet"),
                              num_inference_steps=2, strength=0.6, seed=0)
    (result,) = colorize(request)
    assert result.record["pipeline"] == "StableDiffusionControlNetImg2ImgPipeline"
    assert np.abs(luma(result.image) - luma(Image.open(grey))).mean() <= 1.0


def test_demo_model_gets_the_hues_of_a_greyed_yellow_square_on_purple_back():
    """Meaning: the hues come back within 30 degrees of the true ones (shape and background)."""
    from dreamcli.demo.world import COLORS, Scene, draw
    from dreamcli.requests import ColorizeRequest, ModelOptions
    from dreamcli.tasks import colorize

    folder = demo_model()
    scene = Scene("square", "yellow", "purple", "center", "large")
    truth = draw(scene)
    request = ColorizeRequest(truth.convert("L"), ModelOptions(str(folder)), "a yellow square on a purple background",
                              color_prompt="", num_inference_steps=20, seed=0)
    out = np.asarray(colorize(request)[0].image, np.float64)
    assert np.abs(luma(Image.fromarray(out.astype(np.uint8))) - luma(truth.convert("L"))).mean() <= 1.0
    for name, region in (("yellow", out[56:72, 56:72]), ("purple", out[2:14, 2:14])):
        got = colorsys.rgb_to_hsv(*(region.reshape(-1, 3).mean(0) / 255))[0] * 360
        want = colorsys.rgb_to_hsv(*(np.array(COLORS[name]) / 255))[0] * 360
        gap = min(abs(got - want), 360 - abs(got - want))
        assert gap <= 30, f"{name}: hue {got:.0f} deg, want {want:.0f} +- 30"
