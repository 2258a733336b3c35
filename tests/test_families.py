"""SD3, Flux.1, PixArt-Σ and Kandinsky 2.2 through `dream`: sizes, seeds, single files, LoRAs, samplers, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels
from image_task_helpers import assert_refused, save, texture

FOLDERS = ("sd3", "flux-dev", "flux-schnell", "pixart-sigma", "kandinsky22")
FAMILY = {"sd3": "sd3", "flux-dev": "flux", "flux-schnell": "flux", "pixart-sigma": "pixart",
          "kandinsky22": "kandinsky"}
LABEL = {"sd3": "SD3", "flux": "Flux.1", "pixart": "PixArt-Σ", "kandinsky": "Kandinsky 2.2"}
UNET_LORA = "SD 1.x/2.x/SDXL (UNet)"  # what dream calls the models an SD-style LoRA was made for


# ---------------------------------------------------------------- helpers


@pytest.fixture
def fgen(cli, tmp_path):
    """`dream gen -m MODEL` with 2 steps at 64x32, seed 3, into a fresh folder; later flags win. (result, outdir)"""
    outdir = tmp_path / "out"

    def run(model, *args, prompt="a red circle"):
        args = ["gen", "-m", model, "--steps", 2, "-W", 64, "-H", 32, "-s", 3, "-o", outdir, "-q", *args]
        return cli(*args, *([prompt] if prompt else [])), outdir

    return run


def made(result) -> list[str]:
    """The paths a successful run printed."""
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip().splitlines()


def one(result) -> str:
    (path,) = made(result)
    return path


def record_of(path) -> dict:
    from dreamcli.io.metadata import read_metadata

    return read_metadata(path)["dreamcli"]


def params_of(path) -> str:
    from dreamcli.io.metadata import read_metadata

    return read_metadata(path)["parameters"]


def mean_diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture
def pictures(tmp_path):
    """A 48x32 picture with a mask (white square), its grey version, and a 32x16 picture to upscale."""
    image = save(texture(48, 32), tmp_path / "in.png")
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    return {
        "image": image, "mask": save(mask, tmp_path / "mask.png"),
        "grey": save(texture(48, 32, seed=1).convert("L"), tmp_path / "grey.png"),
        "small": save(texture(32, 16, seed=2), tmp_path / "small.png"),
    }


@pytest.fixture
def task(cli, tmp_path):
    """`dream COMMAND ARGS -m MODEL` with 2 steps, seed 5, into a fresh folder: (result, outdir)."""
    outdir = tmp_path / "task-out"

    def run(command, model, *args):
        return cli(command, *args, "-m", model, "--steps", 2, "-s", 5, "-o", outdir, "-q"), outdir

    return run


# The image-to-image commands, each with arguments that would run on a model that can do it (the tiny models'
# native sizes are 256 px for Flux and 512 for Kandinsky: -W/-H keep them at 48x32). Upscale's default strength
# 0.3 is less than one of 2 steps: 0.5 makes one.
def task_args(p) -> dict:
    return {
        "inpaint": [p["image"], "x", "--mask", p["mask"], "--mask-blur", 2, "-W", 48, "-H", 32],
        "outpaint": [p["image"], "x", "--right", 16],
        "colorize": [p["grey"], "x", "-W", 48, "-H", 32],
        "upscale": [p["small"], "x", "--scale", 2, "--strength", 0.5],
    }


def feathered(mask_path, blur: float) -> np.ndarray:
    from dreamcli.imageops.masks import feather, mask_levels

    return np.asarray(feather(mask_levels(Image.open(mask_path)), blur))


def assert_inpainted(path, p) -> None:
    """Same size as the input, every pixel outside the feathered mask kept bit for bit, the inside repainted."""
    out, before = pixels(path), pixels(p["image"])
    assert out.shape == before.shape == (32, 48, 3)
    soft = feathered(p["mask"], 2)
    assert np.array_equal(out[soft == 0], before[soft == 0])
    assert np.abs(out[soft == 255] - before[soft == 255]).mean() > 5


# ---------------------------------------------------------------- every family folder draws


@pytest.mark.parametrize("name", FOLDERS)
def test_each_family_draws_the_asked_size_and_records_its_family(fgen, cli, families, name):
    path = one(fgen(families[name])[0])
    assert Image.open(path).size == (64, 32)
    record = record_of(path)
    assert record["family"] == FAMILY[name]
    assert (record["width"], record["height"]) == (64, 32)
    shown = cli("info", path)
    assert shown.exit_code == 0
    assert f"Model family: {LABEL[FAMILY[name]]}\n" in shown.stdout
    assert "Size: 64x32" in shown.stdout


def test_size_blocks_of_the_tiny_models(families):
    # The tiny models have 2x VAEs (real ones: 8x), so every multiple of 8 fits them; the refusal of a size off
    # the block is tested on a Flux model with a real-depth VAE below.
    from dreamcli.engine import load_model
    from dreamcli.requests import ModelOptions

    for name in FOLDERS:
        loaded = load_model(ModelOptions(families[name]))
        assert (loaded.family, loaded.spec.size_multiple(loaded.pipe)) == (FAMILY[name], 4)


@pytest.mark.parametrize("name", FOLDERS)
def test_seeds_repeat_and_from_remakes_the_pixels(fgen, cli, families, name):
    first, outdir = fgen(families[name])
    a = one(first)
    b = one(fgen(families[name])[0])
    c = one(fgen(families[name], "-s", 4)[0])
    assert np.array_equal(pixels(a), pixels(b))
    assert mean_diff(a, c) > 1
    again = one(cli("gen", "--from", a, "-o", outdir, "-q"))
    assert again not in (a, b, c)
    assert Image.open(again).size == (64, 32)
    assert np.array_equal(pixels(again), pixels(a))
    assert record_of(again)["family"] == FAMILY[name]


# ---------------------------------------------------------------- single files


def test_sd3_all_in_one_file_draws_what_the_folder_draws(fgen, families):
    # diffusers' single-file loader leaves the T5 encoder in training mode (dropout on): the engine puts every
    # component in eval mode, without which this picture would differ from the folder's, and from run to run.
    folder = one(fgen(families["sd3"])[0])
    single = one(fgen(families["sd3-file"])[0])
    assert np.array_equal(pixels(single), pixels(folder))
    record = record_of(single)
    assert record["family"] == "sd3" and record["model_path"] == str(Path(families["sd3-file"]).resolve())


@pytest.mark.parametrize("transformer_file, folder", [("sd3-transformer-file", "sd3"),
                                                       ("flux-transformer-file", "flux-dev")])
def test_transformer_file_is_completed_by_a_config_folder_or_the_cache(fgen, families, transformer_file, folder):
    plain = one(fgen(families[folder])[0])
    named = one(fgen(families[transformer_file], "--model-config", families[folder])[0])
    # Without --model-config the configs come from the family's reference repo in the HF cache (the fixture put
    # the same tiny folder there as stabilityai/stable-diffusion-3-medium-diffusers and black-forest-labs/FLUX.1-dev).
    cached = one(fgen(families[transformer_file])[0])
    assert np.array_equal(pixels(named), pixels(plain))
    assert np.array_equal(pixels(cached), pixels(plain))
    assert record_of(cached)["family"] == FAMILY[folder]


def test_flux_bfl_file_is_recognised_and_reaches_the_converter(fgen, families):
    # The honest test of this path on a tiny model: the file is recognised as a Flux.1 transformer in Black Forest
    # Labs' layout and handed to diffusers' converter, which hardcodes the real model's width (3072) when it splits
    # the fused single-block weights, so it cannot convert a 32-wide model. A real flux1-dev.safetensors converts.
    result, outdir = fgen(families["flux-bfl-file"])
    assert_refused(result, outdir, Path(families["flux-bfl-file"]).name, "Flux.1", "cannot convert")


# ---------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def flux16(families, tmp_path_factory):
    """The tiny Flux dev with a 4-level (8x) VAE like the real one: it draws in blocks of 16 px, as Flux.1 does."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("flux16") / "flux-dev-8x-vae"
    shutil.copytree(families["flux-dev"], folder, ignore=shutil.ignore_patterns("vae"))
    AutoencoderKL(
        block_out_channels=[8] * 4, in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=8,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    ).save_pretrained(folder / "vae")
    return folder


def test_size_off_the_family_block_is_refused(fgen, flux16):
    result, outdir = fgen(flux16, "-W", 40)
    assert_refused(result, outdir, "width 40", "Flux.1", "blocks of 16 px", "use 32 or 48")
    result, outdir = fgen(flux16, "-W", 48, "-H", 40)
    assert_refused(result, outdir, "height 40", "blocks of 16 px")
    assert Image.open(one(fgen(flux16, "-W", 48)[0])).size == (48, 32)


# ---------------------------------------------------------------- LoRAs


@pytest.mark.parametrize("model, lora", [
    ("sd3", "sd3-lora"), ("flux-dev", "flux-lora"), ("flux-dev", "flux-kohya-lora-double"),
    ("pixart-sigma", "pixart-lora"), ("kandinsky22", "kandinsky-lora"),
])
def test_lora_changes_the_picture_and_scale_zero_does_not(fgen, cli, families, model, lora):
    plain = one(fgen(families[model])[0])
    with_lora = one(fgen(families[model], "--lora", families[lora])[0])
    zero = one(fgen(families[model], "--lora", f"{families[lora]}:0")[0])
    again = one(fgen(families[model])[0])  # the adapter is taken off when a later run names none
    assert mean_diff(with_lora, plain) > 1
    assert np.array_equal(pixels(zero), pixels(plain))
    assert np.array_equal(pixels(again), pixels(plain))
    assert f'Loras: "{families[lora]}:1"' in cli("info", with_lora).stdout


def test_kohya_flux_lora_that_diffusers_cannot_convert_is_one_line(fgen, families):
    # Its single_blocks are split with the real model's widths: diffusers' converter fails with a bare assert.
    result, outdir = fgen(families["flux-dev"], "--lora", families["flux-kohya-lora"])
    assert_refused(result, outdir, "flux-kohya-lora.safetensors", "does not fit", "Flux.1")


def test_lora_made_for_another_family_is_refused(fgen, families, tiny, tmp_path):
    from test_lora import make_diffusers_lora

    result, outdir = fgen(families["sd3"], "--lora", families["flux-lora"])
    assert_refused(result, outdir, "made for Flux.1 models", "this model is SD3")
    result, outdir = fgen(families["sd3"], "--lora", families["flux-kohya-lora-double"])
    assert_refused(result, outdir, "made for Flux.1 models", "this model is SD3")
    sd1_lora = make_diffusers_lora(tiny["sd1"], tmp_path / "sd1-lora.safetensors")
    result, outdir = fgen(families["flux-dev"], "--lora", sd1_lora)
    assert_refused(result, outdir, "sd1-lora.safetensors", f"made for {UNET_LORA} models", "this model is Flux.1")


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("name, samplers", [
    ("sd3", ["flow-euler", "flow-euler-karras", "flow-euler-beta", "flow-heun", "flow-dpm++2m", "flow-unipc"]),
    ("flux-dev", ["flow-euler", "flow-euler-karras", "flow-euler-beta", "flow-unipc"]),
])
def test_flow_samplers_run_on_flow_models(fgen, families, name, samplers):
    from dreamcli.schedulers import SCHEDULERS

    outputs = []
    for sampler in samplers:
        # 3 steps: with 2, the Euler, Karras and beta schedules are all just their two ends, so they draw alike.
        path = one(fgen(families[name], "--scheduler", sampler, "-W", 32, "--steps", 3)[0])
        assert Image.open(path).size == (32, 32)
        assert record_of(path)["scheduler"] == sampler
        assert f"Sampler: {SCHEDULERS[sampler].a1111_name}," in params_of(path)
        outputs.append(pixels(path).tobytes())
    assert len(set(outputs)) == len(samplers)  # each sampler really is another one


@pytest.mark.parametrize("model, sampler, fragments", [
    ("flux-dev", "euler", ["scheduler euler does not fit Flux.1 models", "flow-euler"]),
    ("flux-dev", "flow-heun", ["scheduler flow-heun does not fit Flux.1 models", "it fits SD3"]),
    ("sd3", "dpm++2m-karras", ["does not fit SD3 models"]),
    ("sd1", "flow-euler", ["scheduler flow-euler does not fit SD 1.x models", "it fits SD3, Flux.1"]),
])
def test_sampler_of_the_other_kind_is_refused(fgen, families, tiny, model, sampler, fragments):
    path = tiny["sd1"] if model == "sd1" else families[model]
    result, outdir = fgen(path, "--scheduler", sampler, "-W", 32)
    assert_refused(result, outdir, *fragments)


def test_scheduler_list_names_the_families_each_fits(cli):
    result = cli("gen", "--scheduler", "list")
    assert result.exit_code == 0
    rows = dict(line.split("\t") for line in result.stdout.splitlines())
    assert rows["flow-euler"] == rows["flow-euler-karras"] == rows["flow-unipc"] == "SD3, Flux.1"
    assert rows["flow-heun"] == rows["flow-dpm++2m"] == "SD3"
    assert rows["euler"] == "SD 1.x, SD 2.x, SDXL, PixArt-Σ"
    assert rows["ddim"] == rows["dpm++2m"] == "SD 1.x, SD 2.x, SDXL, PixArt-Σ, Kandinsky 2.2"
    assert not any("SD3" in fits or "Flux" in fits for name, fits in rows.items() if not name.startswith("flow-"))


# ---------------------------------------------------------------- image-to-image commands


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_image_commands_on_sd3_and_flux(task, families, pictures, name):
    model = families[name]
    args = task_args(pictures)
    inpainted = one(task("inpaint", model, *args["inpaint"])[0])
    assert_inpainted(inpainted, pictures)
    assert record_of(inpainted)["family"] == FAMILY[name]

    outpainted = one(task("outpaint", model, *args["outpaint"])[0])
    assert Image.open(outpainted).size == (64, 32)
    assert np.array_equal(pixels(outpainted)[:, :48], pixels(pictures["image"]))  # the original, bit for bit
    assert pixels(outpainted)[:, 48:].std() > 1  # something drawn, not a flat strip

    from dreamcli.imageops.color import chroma, luma

    coloured = one(task("colorize", model, *args["colorize"])[0])
    out = Image.open(coloured)
    assert out.size == (48, 32) and out.mode == "RGB"
    assert np.abs(luma(out) - luma(Image.open(pictures["grey"]))).mean() <= 1.0
    assert np.abs(np.stack(chroma(out))).mean() > 1.0

    enlarged = one(task("upscale", model, *args["upscale"])[0])
    assert Image.open(enlarged).size == (64, 32)
    assert record_of(enlarged)["method"] == "tiled-img2img"


@pytest.mark.parametrize("command", ["inpaint", "outpaint", "colorize", "upscale"])
def test_pixart_refuses_every_image_command(task, families, pictures, command):
    result, outdir = task(command, families["pixart-sigma"], *task_args(pictures)[command])
    pipeline = "inpaint" if command in ("inpaint", "outpaint") else "img2img"
    assert_refused(result, outdir, f"PixArt-Σ models have no {pipeline} pipeline", command)


def test_kandinsky_colorizes_and_upscales_but_inpaints_only_with_its_inpaint_decoder(task, families, pictures):
    args = task_args(pictures)
    for command in ("inpaint", "outpaint"):
        result, outdir = task(command, families["kandinsky22"], *args[command])
        assert_refused(result, outdir, "Kandinsky 2.2 inpaints with its own decoder",
                       "kandinsky-community/kandinsky-2-2-decoder-inpaint")
    coloured = one(task("colorize", families["kandinsky22"], *args["colorize"])[0])
    assert Image.open(coloured).size == (48, 32)
    enlarged = one(task("upscale", families["kandinsky22"], *args["upscale"])[0])
    assert Image.open(enlarged).size == (64, 32)
    assert record_of(enlarged)["family"] == "kandinsky"


def test_kandinsky_inpaint_decoder_inpaints_and_draws_nothing_else(task, fgen, families, pictures):
    inpainted = one(task("inpaint", families["kandinsky22-inpaint"], *task_args(pictures)["inpaint"])[0])
    assert_inpainted(inpainted, pictures)
    assert record_of(inpainted)["family"] == "kandinsky"
    result, outdir = fgen(families["kandinsky22-inpaint"])
    assert_refused(result, outdir, "inpainting one", "dream inpaint or outpaint only")


# ---------------------------------------------------------------- models dream cannot run


def test_one_component_folder_is_refused(fgen, families):
    result, outdir = fgen(Path(families["flux-dev"]) / "transformer")
    assert_refused(result, outdir, "one model component (FluxTransformer2DModel)", "not a whole pipeline")


def test_video_pipeline_folder_is_refused(fgen, tmp_path):
    folder = tmp_path / "wan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "_diffusers_version": "0.42.1"}))
    result, outdir = fgen(folder)
    assert_refused(result, outdir, "a video pipeline (WanPipeline)", "Flux.1")


def test_kandinsky_decoder_needs_its_prior(fgen, families):
    result, outdir = fgen(families["kandinsky22-decoder"])
    assert_refused(result, outdir, "Kandinsky 2.2 decoder without its prior", "kandinsky-2-2-decoder")
    # The hub's layout: the decoder's README.md names its prior, and diffusers follows that link.
    path = one(fgen(families["kandinsky22-decoder-linked"])[0])
    assert Image.open(path).size == (64, 32)
    assert record_of(path)["family"] == "kandinsky"


# ---------------------------------------------------------------- guidance, negative prompts, batches


def test_flux_dev_records_distilled_guidance_as_forge_does(fgen, families):
    flux = params_of(one(fgen(families["flux-dev"], "-g", 3.5)[0]))
    assert "CFG scale: 1," in flux and "Distilled CFG Scale: 3.5," in flux
    schnell = params_of(one(fgen(families["flux-schnell"], "-g", 3.5)[0]))
    assert "CFG scale: 1," in schnell and "Distilled" not in schnell
    sd3_path = one(fgen(families["sd3"], "-g", 3.5)[0])
    sd3 = params_of(sd3_path)
    assert "CFG scale: 3.5," in sd3 and "Distilled" not in sd3
    assert record_of(sd3_path)["request"]["guidance_scale"] == 3.5


def test_negative_prompt_is_refused_where_it_does_nothing(fgen, families, tmp_path):
    plain = one(fgen(families["pixart-sigma"])[0])
    negative = one(fgen(families["pixart-sigma"], "--negative", "blurry")[0])
    assert record_of(negative)["request"]["negative_prompt"] == "blurry"
    assert "Negative prompt: blurry" in params_of(negative)
    assert mean_diff(negative, plain) > 0.5  # PixArt-Σ runs classifier-free guidance against it
    for name in ("flux-dev", "flux-schnell"):
        result, outdir = fgen(families[name], "--negative", "blurry", "-o", tmp_path / name)
        assert_refused(result, tmp_path / name, "--negative has no effect on Flux.1")


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_batch_matches_one_by_one(fgen, families, tmp_path, name):
    batched = made(fgen(families[name], "-n", 2, "--batch-size", 2)[0])
    alone = made(fgen(families[name], "-n", 2, "-o", tmp_path / "alone")[0])
    assert [Path(p).name for p in batched] == [Path(p).name for p in alone] == [
        "00000-3-a-red-circle.png", "00001-4-a-red-circle.png"]
    assert [record_of(p)["fast_paths"]["batch"] for p in batched] == [2, 2]
    for b, a in zip(batched, alone, strict=True):
        assert mean_diff(b, a) < 1 and np.abs(pixels(b) - pixels(a)).max() <= 2  # equal up to float rounding
    assert mean_diff(*batched) > 1  # each image of the batch has its own seed's noise


# ---------------------------------------------------------------- progress


def _steps_seen(model: str, steps: int) -> list[tuple[int, int]]:
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks.generate import generate

    seen = []
    request = GenRequest("x", ModelOptions(model), num_inference_steps=steps, seed=1, width=32, height=32)
    generate(request, on_step=lambda done, total: seen.append((done, total)))
    return seen


def test_kandinsky_progress_counts_prior_and_decoder_steps(families):
    from dreamcli.families.kandinsky import PRIOR_STEPS

    total = PRIOR_STEPS + 2
    assert _steps_seen(families["kandinsky22"], 2) == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize("name", ["pixart-sigma", "sd3", "flux-dev"])
def test_progress_counts_the_steps_asked_for(families, name):
    # PixArt-Σ's pipeline has only the old `callback(step, timestep, latents)`.
    assert _steps_seen(families[name], 2) == [(1, 2), (2, 2)]


def test_a_cached_hub_id_and_a_prompt_file_work_for_a_new_family(fgen, families, tmp_path):
    # conftest put the tiny schnell folder in the HF cache under this repo id: no download, no network.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts, one model load\na red circle\n{\"prompt\": \"a blue square\", \"seed\": 9}\n")
    paths = made(fgen("tiny-org/tiny-flux-schnell", "--prompts", prompts, prompt=None)[0])
    assert len(paths) == 2
    records = [record_of(path) for path in paths]
    assert [r["family"] for r in records] == ["flux", "flux"]
    assert [r["request"]["prompt"] for r in records] == ["a red circle", "a blue square"]
    assert records[1]["seed"] == 9 and records[0]["model"] == "tiny-org/tiny-flux-schnell"


def test_a_controlnet_file_given_as_the_model_is_named(fgen, tmp_path):
    from safetensors.torch import save_file

    net = tmp_path / "control_canny.safetensors"
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(4, 3, 3, 3)}, str(net))
    result, _ = fgen(str(net))
    assert result.exit_code == 2
    assert "control_canny.safetensors is a ControlNet, not a base model" in result.stderr


def test_sd3_refuses_a_size_past_its_position_grid(fgen, families, tmp_path):
    # The tiny SD3's grid: pos_embed_max_size 16 x patch 2 x VAE 2 = 64 px; diffusers raises a ValueError beyond.
    result, outdir = fgen(families["sd3"], "-W", 128, "-H", 64)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: 128x64 is larger than SD3 models draw: use at most 64 px a side"
    assert not outdir.exists() or not list(outdir.iterdir())
