"""Fast paths of `dream gen`: batched prompts, bf16/fp16 with a safe VAE decode, fused QKV, channels_last,
--compile, and the memory options, each checked on the pixels and records a user would look at."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels, written
from test_lora import make_diffusers_lora


@pytest.fixture
def fresh_engine(monkeypatch):
    """A private model cache: fast paths change the loaded model, which other tests must not see."""
    from dreamcli import engine

    monkeypatch.setattr(engine, "_CACHE", {})
    return engine


def paths_of(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip().splitlines()


def record_of(path) -> dict:
    return json.loads(Image.open(path).info["dreamcli"])


def mean_diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def test_batched_prompt_file_matches_one_by_one(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "a red circle\na blue square\n"
        '{"prompt": "a green star", "width": 48}\n'  # another size: a batch of its own
        '{"prompt": "a white cross", "seed": 50, "num_images": 2}\n'
    )
    batched = paths_of(gen("--prompts", prompts, "-s", 3, "--batch-size", 3)[0])
    alone = paths_of(gen("--prompts", prompts, "-s", 3, "-o", tmp_path / "alone")[0])
    names = [p.rsplit("/", 1)[-1] for p in batched]
    assert names == [
        "00000-3-a-red-circle.png", "00001-3-a-blue-square.png", "00002-3-a-green-star.png",
        "00003-50-a-white-cross.png", "00004-51-a-white-cross.png",
    ]
    assert names == [p.rsplit("/", 1)[-1] for p in alone]
    assert [record_of(p)["fast_paths"]["batch"] for p in batched] == [2, 2, 1, 2, 2]
    assert [record_of(p)["fast_paths"]["batch"] for p in alone] == [1] * 5
    for b, a in zip(batched, alone, strict=True):
        assert mean_diff(b, a) < 1  # equal up to float rounding
    assert mean_diff(batched[3], batched[4]) > 1  # each image of a batch has its own seed's noise
    assert Image.open(batched[2]).size == (48, 32)


def test_library_batches_keep_order_and_seeds(tiny):
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate, iter_generate_many

    model = ModelOptions(str(tiny["sd1"]), device="cpu")
    requests = [GenRequest("one", model, num_inference_steps=2, seed=10, num_images=3),
                GenRequest("two", model, num_inference_steps=2, seed=20)]
    results = list(iter_generate_many(requests, batch_size=4))
    assert [(r.record["request"]["prompt"], r.seed, r.index) for r in results] == [
        ("one", 10, 0), ("one", 11, 1), ("one", 12, 2), ("two", 20, 0),
    ]
    alone = generate(GenRequest("two", model, num_inference_steps=2, seed=20))[0]
    diff = np.abs(np.asarray(results[3].image, np.int16) - np.asarray(alone.image, np.int16)).mean()
    assert diff < 1


@pytest.mark.parametrize("value, message", [
    ("0", "batch-size 0 is too small: use 1 or more"),
    ("-2", "batch-size -2 is too small"),
])
def test_bad_batch_size(gen, value, message):
    result, outdir = gen("x", "--batch-size", value)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not written(outdir)


def test_batch_size_from_user_config(cli, tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    (home / "config.toml").write_text('batch_size = "four"\n')
    result = cli("gen", "-m", tiny["sd1"], "x", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "batch-size must be a whole number, got 'four'" in result.stderr
    (home / "config.toml").write_text("batch_size = 2\n")
    paths = paths_of(cli("gen", "-m", tiny["sd1"], "x", "-n", 2, "--steps", 1, "-o", tmp_path / "o", "-q"))
    assert [record_of(p)["fast_paths"]["batch"] for p in paths] == [2, 2]


def test_bf16_on_cpu_is_a_real_picture(gen, fresh_engine):
    fp32 = paths_of(gen("a red circle", "-s", 4)[0])[0]
    bf16 = paths_of(gen("a red circle", "-s", 4, "--dtype", "bf16")[0])[0]
    record = record_of(bf16)
    assert (record["dtype"], record["fast_paths"]["vae_dtype"]) == ("bf16", "bf16")
    assert pixels(bf16).std() > 5  # not a flat (black) picture
    assert mean_diff(bf16, fp32) < 8  # the same picture, within bf16's precision


def _overflow_in_half(vae):
    """Make the VAE's decoder overflow whenever it runs in fp16, as real SD VAEs do on some pictures."""
    calls = []

    def hook(_module, _args, output):
        calls.append(output.dtype)
        return torch.full_like(output, float("inf")) if output.dtype == torch.float16 else output

    return vae.decoder.register_forward_hook(hook), calls


def test_fp16_vae_overflow_is_decoded_again_in_fp32(tiny, fresh_engine):
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate

    half = ModelOptions(str(tiny["sd1"]), device="cpu", dtype="fp16")
    loaded = fresh_engine.load_model(half)
    handle, calls = _overflow_in_half(loaded.pipe.vae)
    try:
        first = generate(GenRequest("x", half, num_inference_steps=2, seed=6))[0]
        assert calls == [torch.float16, torch.float32]  # tried in fp16, overflowed, re-run in fp32
        second = generate(GenRequest("x", half, num_inference_steps=2, seed=7))[0]
        assert calls[2:] == [torch.float32]  # remembered: no second fp16 attempt
    finally:
        handle.remove()
    assert loaded.pipe.vae.dtype == torch.float16  # other tasks share this VAE in its working dtype
    assert first.record["fast_paths"]["vae_dtype"] == "fp32" and first.record["dtype"] == "fp16"
    reference = generate(GenRequest("x", ModelOptions(str(tiny["sd1"]), device="cpu"), num_inference_steps=2,
                                    seed=6))[0]
    a, b = (np.asarray(r.image, np.int16) for r in (first, reference))
    assert a.std() > 5 and np.abs(a - b).mean() < 3  # a real picture, the fp32 one up to fp16 rounding
    assert np.asarray(second.image).std() > 5


def test_non_finite_latents_are_an_error_not_a_black_picture(gen, fresh_engine, tiny):
    from dreamcli.requests import ModelOptions

    loaded = fresh_engine.load_model(ModelOptions(str(tiny["sd1"])))
    handle = loaded.pipe.unet.register_forward_hook(lambda _m, _a, out: (out[0] * float("nan"),))
    try:
        result, outdir = gen("x", "-s", 1)
    finally:
        handle.remove()
    assert result.exit_code == 1
    assert "non-finite latents in fp32" in result.stderr and "--dtype" in result.stderr
    assert not written(outdir)


def test_fused_qkv_same_picture_and_off_while_a_lora_is_on(gen, tiny, tmp_path, fresh_engine):
    lora = make_diffusers_lora(tiny["sd1"], tmp_path / "style.safetensors")
    plain = paths_of(gen("x", "-s", 2, "--no-fuse-qkv")[0])[0]
    fused = paths_of(gen("x", "-s", 2, "--fuse-qkv")[0])[0]
    with_lora = paths_of(gen("x", "-s", 2, "--fuse-qkv", "--lora", lora)[0])[0]
    fused_again = paths_of(gen("x", "-s", 2, "--fuse-qkv")[0])[0]
    assert record_of(plain)["fast_paths"]["attention"] == "AttnProcessor2_0"  # SDPA
    assert (record_of(fused)["fast_paths"]["fused_qkv"], record_of(fused)["fast_paths"]["attention"]) == (
        True, "FusedAttnProcessor2_0")
    assert record_of(with_lora)["fast_paths"]["fused_qkv"] is False
    assert mean_diff(fused, plain) < 1
    assert mean_diff(with_lora, plain) > 2  # the LoRA reaches the attention (fused weights would skip it)
    assert np.array_equal(pixels(fused_again), pixels(fused))  # re-fused without the LoRA's weights


def test_attention_slicing_and_fused_qkv_take_turns(gen, fresh_engine):
    sliced = paths_of(gen("x", "-s", 2, "--fuse-qkv", "--attention-slicing")[0])[0]
    fused = paths_of(gen("x", "-s", 2, "--fuse-qkv")[0])[0]
    assert record_of(sliced)["fast_paths"]["attention"] == "SlicedAttnProcessor"
    assert record_of(sliced)["fast_paths"]["fused_qkv"] is False
    assert record_of(fused)["fast_paths"]["attention"] == "FusedAttnProcessor2_0"
    assert mean_diff(sliced, fused) < 1


def test_cpu_defaults_and_channels_last(gen, fresh_engine):
    default = paths_of(gen("x", "-s", 3, "--offload", "model")[0])[0]
    fast = record_of(default)["fast_paths"]
    # CPU keeps its plain path unless asked: no fusing, no layout change, no offloading to itself.
    assert {k: fast[k] for k in ("fused_qkv", "channels_last", "offload", "compile")} == {
        "fused_qkv": False, "channels_last": False, "offload": None, "compile": None}
    layout = paths_of(gen("x", "-s", 3, "--channels-last")[0])[0]
    assert record_of(layout)["fast_paths"]["channels_last"] is True
    assert mean_diff(layout, default) < 1


def test_vae_tiling_decodes_a_picture_larger_than_a_tile(gen, fresh_engine):
    # The tiny VAE's tiles are 64 px: a 128 px picture is decoded as overlapping tiles.
    tiled = paths_of(gen("x", "-s", 5, "-W", 128, "-H", 128, "--vae-tiling", "--steps", 1)[0])[0]
    whole = paths_of(gen("x", "-s", 5, "-W", 128, "-H", 128, "--steps", 1)[0])[0]
    assert Image.open(tiled).size == (128, 128)
    assert record_of(tiled)["fast_paths"]["vae_tiling"] is True
    assert record_of(whole)["fast_paths"]["vae_tiling"] is False
    assert 0 < mean_diff(tiled, whole) < 10  # blended tiles: close to, but not the same as, one decode


def test_compile_same_picture_and_warmup_reported(gen, cli, tiny, tmp_path, fresh_engine, monkeypatch):
    # The eager backend runs TorchDynamo's capture without code generation: the wiring, not inductor's speed.
    monkeypatch.setattr(fresh_engine, "COMPILE_KWARGS", {"backend": "eager"})
    plain = paths_of(gen("x", "-s", 8)[0])[0]
    result = cli("gen", "-m", tiny["sd1"], "x", "--steps", 2, "-s", 8, "--compile", "-o", tmp_path / "out")
    compiled = paths_of(result)[0]
    assert re.search(r"1 image\(s\) in [\d.]+ s \([\d.]+ s/image, after a [\d.]+ s compile warm-up\)", result.stderr)
    assert record_of(compiled)["fast_paths"]["compile"] == "regional"
    assert record_of(plain)["fast_paths"]["compile"] is None
    assert mean_diff(compiled, plain) < 1
    (loaded,) = fresh_engine._CACHE.values()
    assert loaded.compile_seconds > 0
    compiled_blocks = [m for m in loaded.pipe.unet.modules() if getattr(m, "_compiled_call_impl", None)]
    assert compiled_blocks and all(type(m).__name__ == "BasicTransformerBlock" for m in compiled_blocks)


def test_image_to_image_decodes_with_the_fp32_fallback(tiny, fresh_engine, tmp_path):
    from dreamcli.requests import InpaintRequest, ModelOptions
    from dreamcli.tasks import inpaint

    source = Image.new("RGB", (64, 64), (30, 60, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    half = ModelOptions(str(tiny["sd1"]), device="cpu", dtype="fp16")
    loaded = fresh_engine.load_model(half)
    handle, calls = _overflow_in_half(loaded.pipe.vae)
    try:
        result = inpaint(InpaintRequest(source, mask, "x", half, num_inference_steps=2, seed=1, mask_blur=0))[0]
    finally:
        handle.remove()
    assert torch.float32 in calls  # the fp16 decode overflowed and was re-run in fp32
    inside = np.asarray(result.image, np.int16)[16:48, 16:48]
    assert np.isfinite(inside).all() and inside.std() > 5  # drawn, not black
    assert result.record["fast_paths"]["vae_dtype"] == "fp32"


def test_image_commands_take_the_fast_path_flags(cli, tiny, tmp_path, fresh_engine):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    outdir = tmp_path / "out"
    result = cli("colorize", image, "-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q", "--fuse-qkv",
                 "--channels-last")
    fast = record_of(paths_of(result)[0])["fast_paths"]
    assert (fast["fused_qkv"], fast["channels_last"], fast["attention"]) == (True, True, "FusedAttnProcessor2_0")
    for command in ("inpaint", "outpaint", "upscale"):
        assert "--compile" in cli(command, "--help").stdout
