"""dream tune on a tiny pipeline: files written, diffusers-format keys, reload, resume, loss, class-image cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import pixels, written
from dreamcli.requests import TuneConfig

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def subject_images(folder: Path, count: int = 3, size: int = 72) -> Path:
    """A few flat-colour pictures with a square: enough for the tiny model to learn from."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), (30 + 60 * i, 120, 200))
        image.paste((250, 250, 20), (20, 20, 52, 52))
        image.save(folder / f"subject-{i}.png")
    return folder


def config_for(tiny, tmp_path: Path, **overrides) -> TuneConfig:
    """A 4-step run on the tiny SD1 model with 2 class images of 2 denoising steps."""
    settings = dict(
        instance_data_dir=str(subject_images(tmp_path / "subject")), class_word="shape", model=str(tiny["sd1"]),
        output_dir=str(tmp_path / "run"), max_train_steps=4, num_class_images=2, class_steps=2,
        checkpointing_steps=2, learning_rate=1e-2, device="cpu", num_validation_images=1,
    )
    return TuneConfig(**{**settings, **overrides})


def lora_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One finished 4-step run with the kohya export (shared: training is the slow part)."""
    from dreamcli.training import tune

    tmp = tmp_path_factory.mktemp("tune")
    config = config_for(tiny, tmp, export=("kohya",))
    events = []
    result = tune(config, on_progress=lambda stage, done, total, **info: events.append((stage, done, total)))
    return config, result, events


def test_run_writes_weights_config_log_and_validation_images(finished):
    config, result, events = finished
    outdir = Path(config.output_dir)
    assert result.weights == outdir / "pytorch_lora_weights.safetensors" and result.weights.is_file()
    record = json.loads((outdir / "tune_config.json").read_text())
    assert record["status"] == "finished" and record["step"] == 4
    assert record["settings"]["instance_prompt"] == "a photo of sks shape"
    assert record["settings"]["class_prompt"] == "a photo of shape"
    assert record["settings"]["rank"] == 4 and record["settings"]["lora_alpha"] == 4.0
    log = [json.loads(line) for line in (outdir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for r in log:  # the documented loss: instance MSE + prior weight (1) x class MSE
        assert r["loss"] == pytest.approx(r["instance_loss"] + r["prior_loss"], abs=1e-5)
    assert [p.name for p in result.validation_images] == ["step-000004-0.png"]
    assert Image.open(result.validation_images[0]).size == (32, 32)  # the model's native size
    assert ("training", 4, 4) in events and ("class images", 2, 2) in events


def test_lora_keys_are_diffusers_format(finished, tiny):
    _, result, _ = finished
    keys = lora_keys(result.weights)
    assert keys and all(k.startswith("unet.") for k in keys)  # no text encoder unless asked
    for projection in PROJECTIONS:
        assert any(f".{projection}.lora.down.weight" in k for k in keys)
        assert any(f".{projection}.lora.up.weight" in k for k in keys)
    # Every attention projection of the UNet got an adapter (down and up), nothing else did.
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny["sd1"] / "unet")
    targets = [n for n, _ in unet.named_modules() if n.endswith(PROJECTIONS) and "attentions" in n]
    assert len(keys) == 2 * len(targets)


def test_diffusers_load_lora_weights_changes_the_picture(finished, tiny):
    from diffusers import StableDiffusionPipeline

    _, result, _ = finished
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd1"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def picture():
        out = pipe("a photo of sks shape", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="np")
        return out.images[0]

    base = picture()
    pipe.load_lora_weights(str(result.outdir))  # diffusers' own loader, from the folder
    tuned = picture()
    assert np.abs(tuned - base).mean() > 1e-3
    pipe.unload_lora_weights()
    assert np.abs(picture() - base).max() < 1e-5


def test_kohya_export_has_kohya_names_and_alpha(finished):
    _, result, _ = finished
    (path,) = result.exports
    keys = lora_keys(path)
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith("_attn1_to_out_0.lora_down.weight") for k in keys)
    weights = load_weights(path)
    alphas = [v for k, v in weights.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 4.0 for a in alphas)
    assert len(alphas) * 3 == len(keys)  # down, up and alpha per module


def test_dream_gen_uses_the_lora_folder(finished, gen):
    _, result, _ = finished
    plain, outdir = gen("a photo of sks shape", "-s", "3")
    tuned, _ = gen("a photo of sks shape", "-s", "3", "--lora", result.outdir)
    assert plain.exit_code == 0 and tuned.exit_code == 0, tuned.stderr
    first, second = written(outdir)
    assert np.abs(pixels(first) - pixels(second)).mean() > 0.5


def test_resume_after_interrupt_continues_at_the_right_step(tiny, tmp_path):
    from dreamcli.training import check_inputs, tune

    # 3 subject images at batch 1: 3 batches an epoch, so step 4 is inside the second epoch.
    reference = tune(config_for(tiny, tmp_path / "a", max_train_steps=6, checkpointing_steps=5))

    config = config_for(tiny, tmp_path / "b", max_train_steps=6, checkpointing_steps=5)

    def stop_after_four(stage, done, total, **info):
        if stage == "training" and done == 4:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        tune(config, on_progress=stop_after_four)
    outdir = Path(config.output_dir)
    assert (outdir / "checkpoints" / "step-000004").is_dir()  # written on Ctrl-C
    assert not (outdir / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((outdir / "tune_config.json").read_text())["status"] == "interrupted"

    resumed = TuneConfig(**{**config.__dict__, "resume": True})
    inputs = check_inputs(resumed)
    assert inputs.resume_step == 4
    steps = []
    result = tune(resumed, inputs,
                  on_progress=lambda s, done, total, **i: steps.append(done) if s == "training" else None)
    assert steps == [4, 5, 6] and result.steps == 6
    log = [json.loads(line)["step"] for line in (outdir / "loss_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    # Optimizer, data order and step came back, and each step seeds its own draws: the same weights,
    # bit for bit, as never stopping (tests/test_tune_resume.py covers the walkthrough's settings).
    ours, theirs = load_weights(result.weights), load_weights(reference.weights)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_loss_is_instance_mse_plus_weighted_prior_mse():
    from dreamcli.training import dreambooth_loss

    # Two instance examples then two class examples; each is 1x1x2.
    pred = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 1.0]]], [[[2.0, 2.0]]], [[[0.0, 0.0]]]])
    target = torch.zeros_like(pred)
    parts = dreambooth_loss(pred, target, prior_loss_weight=0.5, with_prior=True)
    assert parts.instance.item() == pytest.approx(1.0)  # mean of 1s
    assert parts.prior.item() == pytest.approx(2.0)  # mean of (4, 4, 0, 0)
    assert parts.total.item() == pytest.approx(1.0 + 0.5 * 2.0)
    alone = dreambooth_loss(pred, target, with_prior=False)
    assert alone.total.item() == pytest.approx(1.5) and alone.prior.item() == 0.0


def test_target_follows_the_models_prediction_type():
    from diffusers import DDPMScheduler

    from dreamcli.training.loss import diffusion_target

    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    eps = DDPMScheduler(prediction_type="epsilon")
    assert diffusion_target(eps, latents, noise, t) is noise
    v = DDPMScheduler(prediction_type="v_prediction")
    alpha = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(diffusion_target(v, latents, noise, t), alpha * noise - sigma * latents)


def test_class_images_are_made_once_and_reused(finished, tiny, tmp_path):
    from dreamcli.training import tune
    from dreamcli.training.class_images import cache_folder

    config, _, _ = finished
    cache_root = Path(os.environ["DREAMCLI_HOME"]) / "cache" / "class-images"
    folders = [p for p in cache_root.iterdir() if (p / "class-00001.png").exists()]
    assert folders, "class images are cached under DREAMCLI_HOME"
    before = {p: p.stat().st_mtime_ns for f in folders for p in f.glob("class-*.png")}
    # A user class folder with one image: topped up from the cache, which already holds enough.
    own = tmp_path / "own-class"
    own.mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(own / "mine.png")
    events = []
    tune(config_for(tiny, tmp_path, max_train_steps=1, num_class_images=3, class_data_dir=str(own),
                    num_validation_images=0),
         on_progress=lambda stage, done, total, **i: events.append(stage))
    assert "class images" not in events  # nothing generated: 1 own + 2 cached
    assert {p: p.stat().st_mtime_ns for f in folders for p in f.glob("class-*.png")} == before
    keys = [("x", "a photo of shape", 32, 30, 7.5), ("x", "a photo of shape", 64, 30, 7.5),
            ("x", "a photo of shape", 32, 20, 7.5), ("x", "a photo of shape", 32, 30, 2.0)]
    assert len({cache_folder(*key) for key in keys}) == len(keys)  # each setting has its own pictures


def test_text_encoder_adapters_are_saved_and_load(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    from dreamcli.training import tune

    result = tune(config_for(tiny, tmp_path, max_train_steps=2, train_text_encoder=True, with_prior_preservation=False,
                             num_validation_images=0, mixed_precision="bf16", gradient_checkpointing=True))
    keys = lora_keys(result.weights)
    assert any(k.startswith("text_encoder.") and "q_proj" in k for k in keys)
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd1"], safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(result.outdir))
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder"}


def test_images_are_turned_upright_and_flattened(tmp_path):
    from dreamcli.training.images import fit, load_training_image

    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    wide.save(tmp_path / "turned.jpg", exif=exif)
    assert load_training_image(tmp_path / "turned.jpg").size == (20, 40)
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert load_training_image(tmp_path / "clear.png").getpixel((3, 3)) == (255, 255, 255)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert load_training_image(tmp_path / "cmyk.jpg").mode == "RGB"
    square = fit(Image.new("RGB", (100, 50)), 32)
    assert square.size == (32, 32)


def test_all_layers_adapt_convolutions_and_load_in_both_formats(tiny, tmp_path, gen):
    from diffusers import StableDiffusionPipeline

    from dreamcli.training import tune

    result = tune(config_for(tiny, tmp_path, max_train_steps=2, lora_layers="all", with_prior_preservation=False,
                             num_validation_images=0, export=("kohya",)))
    keys = lora_keys(result.weights)
    for layer in (".resnets.0.conv1.", ".resnets.0.conv2.", ".proj_in.", ".ff.net.2.", ".attn2.to_k."):
        assert any(layer in k for k in keys), layer
    assert json.loads((result.outdir / "tune_config.json").read_text())["settings"]["lora_layers"] == "all"
    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd1"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def picture(lora: Path | None):
        pipe.unload_lora_weights()
        if lora is not None:
            pipe.load_lora_weights(str(lora))
        return pipe("a photo of sks shape", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    base, tuned, kohya = picture(None), picture(result.outdir), picture(result.exports[0])
    assert np.abs(tuned - base).mean() > 1e-3
    assert np.abs(kohya - tuned).max() < 1e-4  # the A1111/kohya file is the same adapter
    plain, outdir = gen("a photo of sks shape", "-s", "3")
    through_cli, _ = gen("a photo of sks shape", "-s", "3", "--lora", result.outdir)
    assert through_cli.exit_code == 0, through_cli.stderr
    first, second = written(outdir)
    assert np.abs(pixels(first) - pixels(second)).mean() > 0.5


def test_unknown_layers_are_refused():
    with pytest.raises(Exception, match="unknown layers 'conv': use attention or all"):
        TuneConfig(instance_data_dir="x", class_word="dog", model="m", output_dir="o", lora_layers="conv")


def assert_resumes_exactly(config, reference_weights) -> None:
    """Stop `config`'s run after its first step (Ctrl-C), resume it, and get the reference run's tensors."""
    from dreamcli.requests import TuneConfig
    from dreamcli.training import check_inputs, tune

    def stop_after_one(stage, done, total, **info):
        if stage == "training" and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(config, on_progress=stop_after_one)
    resumed = TuneConfig(**{**config.__dict__, "resume": True})
    result = tune(resumed, check_inputs(resumed))
    ours, theirs = load_weights(result.weights), load_weights(reference_weights)
    assert ours.keys() == theirs.keys()
    for key in ours:  # text-encoder adapters included, where the run trains them
        assert torch.equal(ours[key], theirs[key]), key
