"""dream upscale: exact size, close to the input when shrunk back, tiles, the x4 pipeline, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from image_task_helpers import assert_refused, demo_model, psnr, save, texture


@pytest.fixture
def upscale(cli, tiny, tmp_path):
    """`dream upscale` on the tiny SD1 model (32 px tiles), 2 steps at strength 0.5: (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args, model=None):
        return cli("upscale", *args, "-m", model or tiny["sd1"], "--steps", 2, "--strength", 0.5, "-o", outdir,
                   "-s", 1, "-q"), outdir

    return run


def test_exact_size_for_2x_and_4x_with_odd_input_sizes(upscale, tmp_path):
    image = save(texture(13, 9), tmp_path / "odd.png")
    for scale in (2, 4):
        result, outdir = upscale(image, "--scale", scale, "--json")
        assert result.exit_code == 0, result.stderr
        line = json.loads(result.stdout)
        assert Image.open(line["path"]).size == (13 * scale, 9 * scale)
        assert line["task"] == "upscale" and f"upscale-x{scale}-odd" in line["path"]


def test_tiles_cover_the_picture_with_the_requested_geometry(tiny):
    from dreamcli.requests import ModelOptions, UpscaleRequest
    from dreamcli.tasks import upscale

    request = UpscaleRequest(texture(20, 12), ModelOptions(str(tiny["sd1"])), scale=4, tile=32, overlap=8,
                             num_inference_steps=2, strength=0.5, seed=0)
    (result,) = upscale(request)
    # 80x48 in 32 px tiles sharing >= 8 px: 3 columns (0, 24, 48) x 2 rows (0, 16).
    assert result.image.size == (80, 48)
    assert (result.record["tile"], result.record["overlap"], result.record["tiles"]) == (32, 8, 6)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--scale", "3"], ["scale 3 is not supported", "--scale 2 or --scale 4"]),
        (["--tile", "30"], ["tile 30 is not a multiple of 8"]),
        (["--tile", "32", "--overlap", "32"], ["overlap 32"]),
        (["--max-pixels", "1000"], ["over the limit", "--max-pixels 2304"]),
    ],
)
def test_bad_values_are_refused(upscale, tmp_path, args, fragments):
    image = save(texture(12, 12), tmp_path / "in.png")
    result, outdir = upscale(image, *args)
    assert_refused(result, outdir, *fragments)


def test_missing_image_is_refused(upscale, tmp_path):
    result, outdir = upscale(tmp_path / "gone.webp")
    assert_refused(result, outdir, "gone.webp", "does not exist")


@pytest.fixture(scope="module")
def tiny_x4(tmp_path_factory, tiny):
    """A tiny SD x4 upscaler (7-channel UNet conditioned on noise level, VAE shrinking by 4), saved as a folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, num_class_embeds=100,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 16, 32], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, scaling_factor=0.08333,
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, unet=unet, low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
        text_encoder=CLIPTextModel.from_pretrained(tiny["sd1"], subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tiny["sd1"], subfolder="tokenizer"), max_noise_level=350,
    )
    folder = tmp_path_factory.mktemp("x4") / "tiny-x4-upscaler"
    pipe.save_pretrained(folder)
    return folder


def test_an_x4_upscaler_model_runs_through_diffusers_upscale_pipeline(upscale, tiny_x4, tmp_path):
    image = save(texture(12, 8), tmp_path / "small.png")
    for scale in (4, 2):
        result, outdir = upscale(image, "--scale", scale, "--json", model=tiny_x4)
        assert result.exit_code == 0, result.stderr
        line = json.loads(result.stdout)
        assert Image.open(line["path"]).size == (12 * scale, 8 * scale)
    record = json.loads(Image.open(line["path"]).info["dreamcli"])
    assert record["method"] == "sd-x4-upscaler" and record["pipeline"] == "StableDiffusionUpscalePipeline"


def test_demo_model_upscale_shrinks_back_to_the_input(tmp_path):
    """Meaning: the demo model's 4x upscale of a shapes picture, shrunk back, has PSNR >= 25 dB."""
    from dreamcli.demo.world import Scene, draw
    from dreamcli.requests import ModelOptions, UpscaleRequest
    from dreamcli.tasks import upscale

    folder = demo_model()
    small = draw(Scene("circle", "red", "blue", "left", "large"), size=64)
    request = UpscaleRequest(small, ModelOptions(str(folder)), "a red circle on a blue background", scale=4,
                             num_inference_steps=20, seed=0)
    out = upscale(request)[0].image
    assert out.size == (256, 256)
    back = out.resize(small.size, Image.Resampling.LANCZOS)
    assert psnr(back, small) >= 25
    # Still the same picture at full size: red where the circle is, blue around it, no invented shape.
    pixels = np.asarray(out, np.int16)
    assert np.abs(pixels[128, 70] - (220, 30, 30)).max() < 40
    corners = [pixels[y, x] for y in (20, 235) for x in (20, 235)] + [pixels[128, 200]]
    assert all(np.abs(c - (30, 70, 220)).max() < 40 for c in corners)


def test_a_missing_model_path_is_refused_with_one_line(upscale, tmp_path):
    image = save(texture(12, 12), tmp_path / "in.png")
    result, outdir = upscale(image, model=tmp_path / "no-such-model")
    assert_refused(result, outdir, "no-such-model", "not found")
