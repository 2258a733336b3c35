"""dream tune on a tiny SDXL model: both text encoders, size/crop conditioning, reload by diffusers and dream gen,
kohya export, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels, written
from dreamcli.requests import TuneConfig
from test_tune import assert_resumes_exactly, load_weights, lora_keys, subject_images


def sdxl_config(tiny, tmp_path: Path, **overrides) -> TuneConfig:
    """2 steps on the tiny SDXL model, prior preservation with 1 class image, both text encoders trained."""
    settings = dict(
        instance_data_dir=str(subject_images(tmp_path / "subject")), class_word="shape", model=str(tiny["sdxl"]),
        output_dir=str(tmp_path / "run"), max_train_steps=2, num_class_images=1, class_steps=2, checkpointing_steps=1,
        learning_rate=1e-2, device="cpu", num_validation_images=0, train_text_encoder=True, export=("kohya",),
    )
    return TuneConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def sdxl_run(tiny, tmp_path_factory):
    from dreamcli.training import tune

    config = sdxl_config(tiny, tmp_path_factory.mktemp("sdxl"))
    return config, tune(config)


def sdxl_picture(tiny, lora: Path | str | None = None) -> np.ndarray:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe("a photo of sks shape", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images[0]


def test_sdxl_trains_with_prior_and_writes_both_encoders(sdxl_run):
    config, result = sdxl_run
    log = [json.loads(line) for line in (result.outdir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        assert math.isfinite(r["loss"]) and r["prior_loss"] > 0  # half of each batch is a class image
        assert r["loss"] == pytest.approx(r["instance_loss"] + r["prior_loss"], abs=1e-5)
    keys = lora_keys(result.weights)
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    # Every attention projection of the UNet (4 per attention, 2 attentions per transformer block), down and up.
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(config.model) / "unet")
    projections = [n for n, _ in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert len([k for k in keys if k.startswith("unet.")]) == 2 * len(projections)
    assert json.loads((result.outdir / "tune_config.json").read_text())["resolution"] == 32  # the model's own


def test_sdxl_lora_loads_in_diffusers_and_changes_the_picture(sdxl_run, tiny):
    from diffusers import StableDiffusionXLPipeline

    _, result = sdxl_run
    base, tuned = sdxl_picture(tiny), sdxl_picture(tiny, result.outdir)
    assert np.abs(tuned - base).mean() > 1e-3
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    pipe.load_lora_weights(str(result.outdir))
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}


def test_sdxl_kohya_export_is_the_same_adapter(sdxl_run, tiny):
    _, result = sdxl_run
    (path,) = result.exports
    keys = lora_keys(path)
    prefixes = {k.split("_", 2)[1] for k in keys}
    assert prefixes == {"unet", "te1", "te2"}  # lora_unet_, lora_te1_ (CLIP-L), lora_te2_ (OpenCLIP bigG)
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert any(k.endswith("_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight") for k in keys)
    assert len(keys) == 3 * len(lora_keys(result.weights)) // 2  # down, up and alpha for each down/up pair
    alphas = [v for k, v in load_weights(path).items() if k.endswith(".alpha")]
    assert all(float(a) == 4.0 for a in alphas)
    tuned, kohya = sdxl_picture(tiny, result.outdir), sdxl_picture(tiny, path)
    assert np.abs(kohya - tuned).max() < 1e-4


def test_dream_gen_lora_uses_the_sdxl_run(sdxl_run, cli, tiny, tmp_path):
    _, result = sdxl_run
    outdir = tmp_path / "out"
    for extra in ((), ("--lora", result.outdir)):
        run = cli("gen", "-m", tiny["sdxl"], "a photo of sks shape", "--steps", 2, "-s", 3, "-o", outdir, "-q", *extra)
        assert run.exit_code == 0, run.stderr
    first, second = written(outdir)
    assert np.abs(pixels(first) - pixels(second)).mean() > 0.5


def test_sdxl_resume_gives_the_weights_of_an_unbroken_run(sdxl_run, tiny, tmp_path):
    _, reference = sdxl_run
    config = sdxl_config(tiny, tmp_path, export=())

    assert_resumes_exactly(config, reference.weights)


def test_sdxl_time_ids_record_original_size_and_crop_after_the_flip(tmp_path):
    from dreamcli.training.data import DreamBoothDataset, collate
    from dreamcli.training.families import sdxl_time_ids

    # 80 x 40 with a left-to-right ramp: resized to 64 x 32, a 32 px crop starts anywhere in 0..32.
    ramp = np.tile(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], (40, 1, 3))
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    Image.new("RGB", (48, 48), (1, 2, 3)).save(tmp_path / "class.png")
    resized = Image.fromarray(ramp).resize((64, 32), Image.Resampling.BICUBIC)
    dataset = DreamBoothDataset([tmp_path / "wide.png"], [tmp_path / "class.png"], 32, random_crop=True, seed=5)
    seen_flips = set()
    for epoch in range(8):
        dataset.epoch = epoch
        item = dataset[0]
        height, width, top, left = item["instance_geometry"].tolist()
        assert (height, width, top) == (40, 80, 0) and 0 <= left <= 32
        got = np.asarray(((item["instance"].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte())
        plain = np.asarray(resized.crop((int(left), 0, int(left) + 32, 32)))
        mirror = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored = np.asarray(mirror.crop((int(left), 0, int(left) + 32, 32)))
        # The corner is where the crop sits in the picture as the model sees it: the mirrored one when flipped.
        flipped = np.abs(got.astype(int) - mirrored).max() <= 1
        assert flipped or np.abs(got.astype(int) - plain).max() <= 1
        seen_flips.add(flipped)
    assert seen_flips == {True, False}
    batch = collate([dataset[0]])
    ids = sdxl_time_ids(batch["geometry"], 32)
    assert ids[0, :3].tolist() == [40, 80, 0] and ids[0, 4:].tolist() == [32, 32]
    assert ids[1].tolist() == [48, 48, 0, 0, 32, 32]  # the class picture: a square, resized whole
