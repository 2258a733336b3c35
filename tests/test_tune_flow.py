"""dream tune on tiny SD3 and Flux models (flow matching): prior preservation, reload by diffusers and dream gen,
kohya export in the original checkpoints' names, resume; and the pieces each family contributes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pixels, written
from dreamcli.requests import TuneConfig
from test_tune import assert_resumes_exactly, load_weights, lora_keys, subject_images

PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux-dev": "FluxPipeline"}


def flow_config(families, name: str, tmp_path: Path, **overrides) -> TuneConfig:
    """2 steps at 32 px with 1 class image; CLIP adapters trained too; kohya export."""
    settings = dict(
        instance_data_dir=str(subject_images(tmp_path / "subject")), class_word="shape", model=families[name],
        output_dir=str(tmp_path / "run"), max_train_steps=2, num_class_images=1, class_steps=2, checkpointing_steps=1,
        learning_rate=1e-2, device="cpu", num_validation_images=0, resolution=32, train_text_encoder=True,
        export=("kohya",),
    )
    return TuneConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", params=["sd3", "flux-dev"])
def flow_run(request, families, tmp_path_factory):
    from dreamcli.training import tune

    config = flow_config(families, request.param, tmp_path_factory.mktemp(request.param))
    return request.param, config, tune(config)


def picture(families, name: str, lora=None) -> np.ndarray:
    import diffusers

    pipe = getattr(diffusers, PIPELINES[name]).from_pretrained(families[name])
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe("a photo of sks shape", num_inference_steps=2, height=32, width=32,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def test_trains_with_prior_and_adapts_the_familys_layers(flow_run):
    name, config, result = flow_run
    log = [json.loads(line) for line in (result.outdir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        assert math.isfinite(r["loss"]) and r["prior_loss"] > 0
        assert r["loss"] == pytest.approx(r["instance_loss"] + r["prior_loss"], abs=1e-5)
    keys = lora_keys(result.weights)
    modules = {k.rsplit(".lora_", 1)[0] for k in keys if k.startswith("transformer.")}
    if name == "sd3":  # joint attention with the text stream's add_* projections; CLIP-L and CLIP-G adapters
        assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder", "text_encoder_2"}
        assert "transformer.transformer_blocks.0.attn.add_q_proj" in modules
        assert "transformer.transformer_blocks.0.attn.to_add_out" in modules
        assert not any(".ff." in m for m in modules)
        # 2 blocks x 8 projections, less the last block's text output (it only feeds attention).
        assert len(modules) == 15
    else:  # attention and feed-forwards, the single blocks' q/k/v among them; CLIP-L only (no T5 adapters)
        assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder"}
        assert "transformer.transformer_blocks.0.ff_context.net.2" in modules
        assert "transformer.single_transformer_blocks.0.attn.to_q" in modules
        assert len(modules) == 12 + 3


def test_diffusers_loads_the_lora_and_it_changes_the_picture(flow_run, families):
    name, _, result = flow_run
    base, tuned = picture(families, name), picture(families, name, result.outdir)
    assert np.abs(tuned - base).mean() > 1e-3


def test_dream_gen_lora_uses_the_run(flow_run, families, cli, tmp_path):
    name, _, result = flow_run
    outdir = tmp_path / "out"
    for extra in ((), ("--lora", result.outdir)):
        run = cli("gen", "-m", families[name], "a photo of sks shape", "--steps", 2, "-s", 3, "-W", 32, "-H", 32,
                  "-o", outdir, "-q", *extra)
        assert run.exit_code == 0, run.stderr
    first, second = written(outdir)
    assert np.abs(pixels(first) - pixels(second)).mean() > 0.5


def test_kohya_export_uses_the_original_names_with_fused_qkv(flow_run, families, cli, tmp_path):
    name, config, result = flow_run
    (path,) = result.exports
    kohya = load_weights(path)
    ours = load_weights(result.weights)
    if name == "sd3":
        qkv, stream = "lora_unet_joint_blocks_0_x_block_attn_qkv", "transformer.transformer_blocks.0.attn.to_"
        # Per block: x and context qkv and proj (the last block has no context proj); CLIP-L, CLIP-G layers.
        assert {k.split(".")[0] for k in kohya if k.startswith("lora_unet_")} == {
            f"lora_unet_joint_blocks_{i}_{s}_attn_{p}" for i in (0, 1) for s in ("x_block", "context_block")
            for p in ("qkv", "proj")} - {"lora_unet_joint_blocks_1_context_block_attn_proj"}
    else:
        qkv, stream = "lora_unet_double_blocks_0_img_attn_qkv", "transformer.transformer_blocks.0.attn.to_"
        assert {k.split(".")[0] for k in kohya if k.startswith("lora_unet_")} == {
            f"lora_unet_double_blocks_0_{layer}" for layer in (
                "img_attn_qkv", "txt_attn_qkv", "img_attn_proj", "txt_attn_proj", "img_mlp_0", "img_mlp_2",
                "txt_mlp_0", "txt_mlp_2")} | {"lora_unet_single_blocks_0_linear1"}
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for k in kohya)
    # The fused qkv adapter is the same update as the three separate ones: up @ down x (alpha / rank) equal.
    down, up = kohya[f"{qkv}.lora_down.weight"], kohya[f"{qkv}.lora_up.weight"]
    fused = up @ down * float(kohya[f"{qkv}.alpha"]) / down.shape[0]
    parts = [ours[f"{stream}{p}.lora_B.weight"] @ ours[f"{stream}{p}.lora_A.weight"] for p in "qkv"]
    torch.testing.assert_close(fused, torch.cat(parts) * config.alpha / config.rank)
    if name == "sd3":  # dream gen reads kohya SD3 files: the same picture as the diffusers-format file
        outdir = tmp_path / "out"
        for lora in (result.outdir, path):
            run = cli("gen", "-m", families[name], "a photo of sks shape", "--steps", 2, "-s", 3, "-W", 32, "-H", 32,
                      "-o", outdir, "-q", "--lora", lora)
            assert run.exit_code == 0, run.stderr
        first, second = written(outdir)
        assert np.abs(pixels(first) - pixels(second)).max() <= 1


def test_resume_gives_the_weights_of_an_unbroken_run(flow_run, families, tmp_path):
    name, _, reference = flow_run
    config = flow_config(families, name, tmp_path, export=())

    assert_resumes_exactly(config, reference.weights)


# ---- the pieces, against diffusers' own pipelines and the flow-matching formulas ----


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux-dev"])
def test_prompt_conditioning_is_what_the_pipeline_generates_with(name, tiny, families):
    import diffusers

    from dreamcli import families as registry
    from dreamcli.training.families import recipe, text_encoders

    folder = tiny[name] if name in tiny else families[name]
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    found = recipe(registry.for_pipeline(pipe))
    with torch.no_grad():
        cond = found.encode(text_encoders(pipe, found), found.tokenize(pipe, "a photo of sks shape"))
        if name == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt("a photo of sks shape", do_classifier_free_guidance=False)
        elif name == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt("a photo of sks shape", None, None, max_sequence_length=77,
                                                      do_classifier_free_guidance=False)
        else:
            embeds, pooled, _ = pipe.encode_prompt("a photo of sks shape", None, max_sequence_length=512)
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled"], pooled)


def test_flow_noise_follows_the_rectified_flow_formulas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dreamcli.training.loss import flow_noise, preconditioned

    torch.manual_seed(0)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    latents, noise = torch.randn(64, 4, 2, 2), torch.randn(64, 4, 2, 2)
    noised = flow_noise(scheduler, latents, noise)
    sigma = noised.sigmas
    torch.testing.assert_close(noised.noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noised.target, noise - latents)
    # Timesteps come from the shifted schedule: sigma = 3s / (1 + 2s) with s = t / 1000 before the shift.
    torch.testing.assert_close(noised.timesteps / 1000, sigma.flatten(), atol=1e-4, rtol=0)
    assert float(sigma.median()) > 0.6  # logit-normal around 0.5, shifted up by 3
    assert torch.all(noised.weighting == 1)
    # SD3's preconditioning: a perfect velocity gives back the clean latents.
    x0, target = preconditioned(noised.target, noised, latents)
    torch.testing.assert_close(x0, latents, atol=1e-5, rtol=0)
    assert target is latents
    cosmap = flow_noise(scheduler, latents, noise, "cosmap")
    s = cosmap.sigmas
    torch.testing.assert_close(cosmap.weighting, 2 / (math.pi * (1 - 2 * s + 2 * s**2)))


def test_flux_denoiser_call_packs_latents_and_scales_time():
    from dreamcli.training.families import RECIPES

    seen = {}

    class Echo(torch.nn.Module):
        config = type("Config", (), {"guidance_embeds": True})()

        def forward(self, **kwargs):
            seen.update(kwargs)
            return (kwargs["hidden_states"],)

    noisy = torch.randn(2, 16, 8, 6)
    cond = {"prompt_embeds": torch.randn(2, 5, 96), "pooled": torch.randn(2, 32)}
    out = RECIPES["flux"].predict(Echo(), noisy, torch.tensor([250.0, 1000.0]), cond, None, 16)
    torch.testing.assert_close(out, noisy)  # packed into 2x2 patches and back, unchanged
    assert seen["hidden_states"].shape == (2, 4 * 3, 64)
    assert seen["timestep"].tolist() == [0.25, 1.0]
    assert seen["guidance"].tolist() == [3.5, 3.5]
    assert seen["img_ids"].shape == (12, 3) and seen["txt_ids"].shape == (5, 3)
    assert seen["img_ids"][:, 1].max() == 3 and seen["img_ids"][:, 2].max() == 2  # rows and columns of patches


def test_cli_tunes_sd3_with_a_chosen_timestep_density(cli, families, tmp_path):
    outdir = tmp_path / "run"
    args = ("tune", "-m", families["sd3"], "--images", subject_images(tmp_path / "s"), "--class", "shape", "-o", outdir,
            "--device", "cpu", "--steps", 1, "--no-prior", "--resolution", 32, "--validation-images", 0, "-q")
    bad = cli(*args, "--timestep-density", "gaussian")
    assert bad.exit_code == 2 and not outdir.exists()
    assert bad.stderr.strip() == (
        "error: unknown timestep density 'gaussian': use logit_normal, mode, cosmap, uniform"
    )
    result = cli(*args, "--timestep-density", "cosmap")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(outdir / "pytorch_lora_weights.safetensors")]
    record = json.loads((outdir / "tune_config.json").read_text())
    assert record["family"] == "sd3" and record["settings"]["timestep_density"] == "cosmap"
    assert math.isfinite(record["final_loss"])
