"""Memory options (memory.py): fp8 weights, bitsandbytes refusals, SD3 without T5, offloading, and the choice of
what fits, checked on pictures, byte counts, exact error lines and exit codes. Everything here runs on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcli import memory
from dreamcli.errors import InputError
from dreamcli.families import get as family
from dreamcli.requests import ModelOptions, model_options_from

GB = 10**9
# Component sizes in bf16 (parameters x 2 bytes, rounded): Flux.1-dev and SD3 Medium.
FLUX = {"transformer": 23_800_000_000, "text_encoder_2": 9_520_000_000, "text_encoder": 246_000_000,
        "vae": 168_000_000}
# Flux.1-dev's transformer once stored in fp8: the AdaLN modulation layers, norms and embeddings stay bf16
# (memory.fp8_bytes on the published config, counted on a meta copy).
FLUX_FP8 = 15_150_000_000
SD3_MEDIUM = {"transformer": 4_170_000_000, "text_encoder_3": 9_520_000_000, "text_encoder": 247_000_000,
              "text_encoder_2": 1_390_000_000, "vae": 168_000_000}


def load(path, **kwargs):
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(path, dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(pipe, seed: int = 0) -> np.ndarray:
    """A 32 px picture in 0-255 levels, 2 steps, the same noise every time."""
    result = pipe("a red circle on blue", num_inference_steps=2, height=32, width=32,
                  generator=torch.Generator().manual_seed(seed), output_type="np")
    return result.images[0] * 255


def levels(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and largest difference between two pictures, in 0-255 levels."""
    diff = np.abs(a - b)
    return float(diff.mean()), float(diff.max())


# ---------------------------------------------------------------- fp8 weights


@pytest.mark.parametrize("name, family_name", [("flux-dev", "flux"), ("sd3", "sd3")])
def test_fp8_weights_draw_nearly_the_same_picture_in_less_memory(families, name, family_name):
    spec = family(family_name)
    plain = load(families[name])
    reference = picture(plain)
    before = memory.pipeline_bytes(plain)["transformer"]

    pipe = load(families[name])
    memory.quantize(pipe, spec, "fp8", torch.float32)
    after = memory.pipeline_bytes(pipe)["transformer"]
    in_fp8 = sum(p.numel() for p in pipe.transformer.parameters() if p.dtype == torch.float8_e4m3fn)
    mean, largest = levels(picture(pipe), reference)

    # Every linear layer's weights go from 4 bytes to 1; norms, embeddings and the AdaLN modulation layers stay in
    # fp32. They are a quarter to a third of these tiny models' weights (and of Flux dev's: 15.2 GB in fp8).
    assert in_fp8 > 0.6 * sum(p.numel() for p in plain.transformer.parameters())
    assert after == before - 3 * in_fp8
    assert memory.fp8_bytes(plain.transformer) == after  # counted before quantizing, on a weightless copy
    # Measured: Flux 0.48 mean / 2.6 largest, SD3 0.43 / 2.7 levels, on pictures with a spread of ~40 levels.
    assert reference.std() > 10
    assert mean < 1.5 and largest < 10, (mean, largest)


@pytest.mark.parametrize("name, family_name, lora", [("flux-dev", "flux", "flux-lora"), ("sd3", "sd3", "sd3-lora")])
def test_a_lora_loaded_on_fp8_weights_draws_as_if_loaded_first(families, name, family_name, lora):
    """peft makes a LoRA the dtype of the layer it wraps: in fp8 it would lose its small values and could not
    multiply. diffusers supports LoRA first, fp8 after; the engine loads LoRAs after, and gets the same picture."""
    spec = family(family_name)
    without_lora = load(families[name])
    memory.quantize(without_lora, spec, "fp8", torch.float32)
    lora_first = load(families[name])
    lora_first.load_lora_weights(families[lora])
    lora_first.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    lora_after = load(families[name])
    memory.quantize(lora_after, spec, "fp8", torch.float32)
    lora_after.load_lora_weights(families[lora])

    assert {p.dtype for n, p in lora_after.transformer.named_parameters() if ".lora_" in n} == {torch.float32}
    assert np.array_equal(picture(lora_after), picture(lora_first))
    assert levels(picture(lora_after), picture(without_lora))[0] > 2  # and the LoRA shows (measured 3.6 / 37 levels)


def test_quantize_none_and_load_time_modes_leave_the_weights_alone(families):
    pipe = load(families["sd3"])
    before = memory.pipeline_bytes(pipe)
    for mode in (None, "none", "nf4", "int8"):  # nf4 / int8 are applied while loading, by load_kwargs
        memory.quantize(pipe, family("sd3"), mode, torch.float32)
    assert memory.pipeline_bytes(pipe) == before


# ---------------------------------------------------------------- bitsandbytes and --no-t5 at load time


@pytest.mark.parametrize("mode", ["nf4", "int8"])
@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_bitsandbytes_modes_need_cuda(mode, device):
    options = ModelOptions(model="m", quantize=mode)
    with pytest.raises(InputError) as e:
        memory.load_kwargs(family("flux"), options, device, torch.bfloat16)
    assert str(e.value) == f"--quantize {mode} needs a CUDA GPU: use --quantize fp8 or leave it out"


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_bitsandbytes_modes_need_bitsandbytes(monkeypatch, mode):
    monkeypatch.setattr(memory, "find_spec", lambda name: None)
    with pytest.raises(InputError) as e:
        memory.load_kwargs(family("flux"), ModelOptions(model="m", quantize=mode), "cuda", torch.bfloat16)
    assert str(e.value) == f"--quantize {mode} needs bitsandbytes: pip install bitsandbytes, or use --quantize fp8"


def test_nf4_quantizes_the_denoiser_and_t5_while_loading(monkeypatch):
    monkeypatch.setattr(memory, "find_spec", lambda name: object())  # as if bitsandbytes were installed
    flux = memory.load_kwargs(family("flux"), ModelOptions(model="m", quantize="nf4"), "cuda:1",
                              torch.bfloat16)
    config = flux["quantization_config"]
    assert config.quant_backend == "bitsandbytes_4bit"
    assert config.quant_kwargs == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                   "bnb_4bit_compute_dtype": torch.bfloat16}
    assert config.components_to_quantize == ["transformer", "text_encoder_2"]

    sd3 = memory.load_kwargs(family("sd3"), ModelOptions(model="m", quantize="int8", no_t5=True), "cuda",
                             torch.float16)
    assert sd3["text_encoder_3"] is None and sd3["tokenizer_3"] is None
    assert sd3["quantization_config"].quant_backend == "bitsandbytes_8bit"
    assert sd3["quantization_config"].components_to_quantize == ["transformer"]  # its T5 is not loaded at all

    with pytest.raises(InputError, match=r"^--quantize nf4 needs a diffusers folder or hub repo, not a single file"):
        memory.load_kwargs(family("flux"), ModelOptions(model="m", quantize="nf4"), "cuda", torch.bfloat16,
                           single_file=True)
    # fp8 and nothing need no load-time arguments.
    for mode in (None, "none", "fp8"):
        assert memory.load_kwargs(family("sd3"), ModelOptions(model="m", quantize=mode), "cpu",
                                  torch.float32) == {}


@pytest.mark.parametrize("family_name, why", [
    ("flux", "Flux.1 models need their T5 encoder for every prompt"),
    ("pixart", "PixArt-Σ models need their T5 encoder for every prompt"),
    ("sd1", "SD 1.x models have no T5 encoder"),
])
def test_no_t5_is_refused_outside_sd3(family_name, why):
    with pytest.raises(InputError) as e:
        memory.load_kwargs(family(family_name), ModelOptions(model="m", no_t5=True), "cpu", torch.float32)
    assert str(e.value) == f"--no-t5 works only with SD3 models; {why}: leave out --no-t5"


def test_sd3_without_t5_loads_less_and_still_draws(families):
    spec = family("sd3")
    kwargs = memory.load_kwargs(spec, ModelOptions(model="m", no_t5=True), "cpu", torch.float32)
    pipe = load(families["sd3"], **kwargs)
    full = load(families["sd3"])

    assert pipe.text_encoder_3 is None and "text_encoder_3" not in memory.pipeline_bytes(pipe)
    without, with_t5 = picture(pipe), picture(full)
    assert without.shape == (32, 32, 3) and without.std() > 10
    assert levels(without, with_t5)[0] > 0.5  # T5's tokens steer the picture; zeros in their place change it
    assert memory.describe(None, None, pipe, spec) == {"offload": None, "quantize": None, "t5": False}
    assert memory.describe("model", "fp8", full, spec) == {"offload": "model", "quantize": "fp8", "t5": True}


def test_describe_says_none_for_families_without_t5(families):
    pipe = load(families["kandinsky22"])
    assert memory.describe("none", "none", pipe, family("kandinsky")) == {
        "offload": None, "quantize": None, "t5": None}


# ---------------------------------------------------------------- offloading


def test_offloading_from_the_cpu_to_itself_is_nothing(families):
    spec = family("flux")
    reference = picture(load(families["flux-dev"]))
    for mode in ("model", "sequential", "group"):
        pipe = load(families["flux-dev"])
        memory.apply_offload(pipe, spec, mode, "cpu")
        assert not hasattr(pipe.transformer, "_hf_hook") and not hasattr(pipe.transformer, "_diffusers_hook")
        assert levels(picture(pipe), reference) == (0.0, 0.0)


@pytest.mark.parametrize("name, family_name", [("flux-dev", "flux"), ("sd3", "sd3")])
def test_group_offload_hooks_every_model_but_the_vae(families, name, family_name):
    """The group wiring, run with the CPU as both places (the engine never does this; CUDA is untested here)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    spec = family(family_name)
    reference = picture(load(families[name]))
    pipe = load(families[name])
    memory._group_offload(pipe, spec, "cpu")
    hooked = {n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module) and _is_group_offload_enabled(m)}
    models = {n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert hooked == models - {"vae"}
    assert levels(picture(pipe), reference) == (0.0, 0.0)
    fp8 = load(families[name])
    memory.quantize(fp8, spec, "fp8", torch.float32)
    memory._group_offload(fp8, spec, "cpu")  # fp8 storage and group offloading together
    assert levels(picture(fp8), reference)[0] < 1.5


def test_unknown_offload_mode_is_refused(families):
    with pytest.raises(InputError, match="unknown offload 'disk'"):
        memory.apply_offload(object(), family("sd1"), "disk", "cuda")


# ---------------------------------------------------------------- choosing what fits


@pytest.mark.parametrize("free_gb, expected", [
    (80, (None, None)),  # 33.7 GB fits an 80 GB card whole
    (30, (None, "fp8")),  # 15.2 + 9.9 GB: fp8 transformer, everything resident
    (24, ("model", "fp8")),  # a 24 GB card: 23.8 GB of transformer alone leaves no room to compute
    (16, ("group", None)),  # 15.2 GB of fp8 transformer is over 85% of 16
    (12, ("group", None)),
    (8, ("group", None)),
    (0, ("group", None)),
])
def test_choose_for_flux(free_gb, expected):
    offload, quantize, reason = memory.choose(family("flux"), FLUX, free_gb * GB, fp8_denoiser=FLUX_FP8)
    assert (offload, quantize) == expected
    assert reason.startswith(f"Flux.1 weights 33.7 GB (transformer 23.8 GB), {free_gb:.1f} GB free on cuda: ")


def test_choose_says_why_in_one_line():
    reason = memory.choose(family("flux"), FLUX, 20 * GB, fp8_denoiser=FLUX_FP8)[2]
    assert reason == (
        "Flux.1 weights 33.7 GB (transformer 23.8 GB), 20.0 GB free on cuda: fp8 transformer + model offload")
    assert memory.choose(family("sdxl"), 5_140_000_000, 20 * GB, "cuda:1")[2] == (
        "SDXL weights 5.1 GB (unet 5.1 GB), 20.0 GB free on cuda:1: everything on the GPU")


def test_choose_prefers_model_offload_to_fp8_when_t5_is_the_bulk():
    # SD3 Medium on 12 GB: fp8 of a 4 GB transformer cannot make room for a 9.5 GB T5; one model at a time fits.
    assert memory.choose(family("sd3"), SD3_MEDIUM, 12 * GB)[:2] == ("model", None)
    assert memory.choose(family("sd3"), SD3_MEDIUM, 18.3 * GB)[:2] == (None, None)  # 15.5 <= 0.85 * 18.3
    assert memory.choose(family("sd3"), SD3_MEDIUM, 18.2 * GB)[:2] == (None, "fp8")


def test_choose_counts_fp8_against_the_loaded_dtype():
    # A 10 GB denoiser alone: in fp32 (4 bytes a weight) fp8 keeps 2.5 GB, in fp16 5 GB.
    assert memory.choose(family("sd3"), 10 * GB, 4 * GB, dtype_bytes=4)[:2] == (None, "fp8")
    assert memory.choose(family("sd3"), 10 * GB, 4 * GB, dtype_bytes=2)[:2] == ("group", None)


def test_choose_without_fp8_for_weights_quantized_already():
    flux = family("flux")
    assert memory.choose(flux, FLUX, 30 * GB, fp8=False)[:2] == ("model", None)  # 23.8 <= 0.85 * 30
    assert memory.choose(flux, FLUX, 16 * GB, fp8=False)[:2] == ("group", None)


def test_fp8_is_refused_on_weights_quantized_already(families):
    pipe = load(families["flux-dev"])
    pipe.transformer.is_quantized = True  # what diffusers sets on GGUF and bitsandbytes models
    with pytest.raises(InputError) as e:
        memory.quantize(pipe, family("flux"), "fp8", torch.float32)
    assert str(e.value) == (
        "--quantize fp8 needs full-precision weights, and this Flux.1 transformer is quantized already: "
        "leave out --quantize")


def test_resolve_keeps_what_was_asked_and_never_offloads_on_the_cpu(families):
    pipe, spec = object(), family("flux")

    def resolve(device, **fields):
        return memory.resolve(pipe, spec, ModelOptions(model="m", **fields), device)

    assert resolve("cpu") == (None, None, None)  # auto chooses only on CUDA
    assert resolve("mps") == (None, None, None)
    assert resolve("cpu", offload="group", quantize="fp8") == (None, "fp8", None)
    assert resolve("cuda", offload="sequential") == ("sequential", None, None)
    assert resolve("cuda", offload="none", quantize="none") == (None, None, None)


# ---------------------------------------------------------------- flags and settings


def test_offload_settings_old_and_new():
    def offload(value):
        return model_options_from({"model": "m", "offload": value}).offload

    assert offload(True) == "model" and offload(False) == "none"  # config files from when it was a switch
    assert [offload(v) for v in (None, "auto", "none", "model", "sequential", "group")] == [
        None, None, "none", "model", "sequential", "group"]
    assert model_options_from({"model": "m", "quantize": "auto"}).quantize is None
    assert model_options_from({"model": "m", "no_t5": True}).no_t5 is True
    with pytest.raises(InputError) as e:
        offload("disk")
    assert str(e.value) == "unknown offload 'disk': use one of auto, none, model, sequential, group (or true / false)"
    with pytest.raises(InputError, match="^no-t5 must be true or false"):
        model_options_from({"model": "m", "no_t5": "yes"})


@pytest.mark.parametrize("flag, value, line", [
    ("--offload", "disk", "error: unknown offload 'disk': use one of auto, none, model, sequential, group "
                          "(or true / false)"),
    ("--quantize", "fp4", "error: unknown quantize 'fp4': use one of auto, none, fp8, nf4, int8"),
])
@pytest.mark.parametrize("command", ["gen", "inpaint", "upscale"])
def test_bad_memory_flags_exit_2_with_one_line(cli, tiny, tmp_path, flag, value, line, command):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "red").save(image)
    args = {"gen": ["a red circle"], "inpaint": [image, "--mask", image], "upscale": [image]}[command]
    outdir = tmp_path / "out"
    result = cli(command, *args, "-m", tiny["sd1"], flag, value, "-o", outdir, "-q")
    assert result.exit_code == 2
    assert result.stderr.strip() == line
    assert not outdir.exists() or not any(outdir.iterdir())


def test_offload_takes_a_value(gen):
    result, _ = gen("a red circle", "--offload")
    assert result.exit_code == 2 and "requires an argument" in result.stderr


def test_memory_flags_reach_the_request_record(gen):
    import json

    from PIL import Image

    result, _ = gen("a red circle", "--offload", "group", "--quantize", "none", "-s", 1)
    assert result.exit_code == 0, result.stderr
    (path,) = result.stdout.split()
    model = json.loads(Image.open(path).info["dreamcli"])["request"]["model"]
    assert (model["offload"], model["quantize"], model["no_t5"]) == ("group", "none", False)


def test_fp8_bytes_of_flux_dev_as_published():
    """A third of Flux dev's weights stay bf16 under fp8 storage (the AdaLN modulation layers are "norm" to
    diffusers' skip list): what choose() is told, instead of one byte per weight (11.9 GB)."""
    import diffusers

    from dreamcli.bench.shapes import FLUX_DEV, default_dtype

    with torch.device("meta"), default_dtype(torch.bfloat16):
        transformer = diffusers.FluxTransformer2DModel(**FLUX_DEV)
    assert memory.fp8_bytes(transformer) == pytest.approx(FLUX_FP8, rel=0.002)
    assert sum(p.numel() * p.element_size() for p in transformer.parameters()) == pytest.approx(
        FLUX["transformer"], rel=0.002)
