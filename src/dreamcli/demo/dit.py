"""The second demo model: a small SD3-format diffusion transformer (MMDiT) trained by flow matching on the
shapes world, over the first demo model's VAE, tokenizer and text encoder.

Run through `python -m dreamcli.demo.train --arch dit`; this module holds only what differs from the UNet
demo: the models, the pipeline, and the flow-matching loop.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .tokenizer import MAX_LENGTH

UNET_DEMO = Path(__file__).parent / "model"  # its VAE, tokenizer and text encoder are reused
# Width 128 (4 heads of 32), 8 joint blocks, 2x2 patches: 4.7 M parameters, as many as the UNet demo's 4.8 M,
# so the transformer's weights stay near 19 MB. 2x2 patches make the 16x16 latent 64 image tokens.
WIDTH, HEAD_DIM, DEPTH, PATCH = 128, 32, 8, 2
# A second CLIP is part of the SD3 format (the pipeline joins both encoders' states); here a tiny one,
# random and frozen, whose states are only a second, distinct code for each word.
SECOND_TEXT_WIDTH = 32
# What the transformer sees of the text: both CLIPs' penultimate states side by side (128 + 32).
JOINT_DIM = 128 + SECOND_TEXT_WIDTH
# Resolution shift of SD3's flow schedule: 3.0 at 1024 px (4096 latent tokens); at 64 tokens, none.
SHIFT = 1.0


def text_encoders(vocab_size: int, eos_id: int, bos_id: int):
    """CLIP-L's place: the UNet demo's trained encoder (it already tells every world word apart), with a
    projection for the pooled vector. CLIP-G's place: a tiny random encoder. Both stay frozen."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .train import text_config

    trained = CLIPTextModel.from_pretrained(UNET_DEMO / "text_encoder")
    first = CLIPTextModelWithProjection(trained.config)
    # transformers 5's CLIPTextModel keeps its layers at the top level, the projection model under text_model.
    weights = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in trained.state_dict().items()}
    missing, unexpected = first.load_state_dict(weights, strict=False)
    assert not unexpected and missing == ["text_projection.weight"], (missing, unexpected)
    second = CLIPTextModelWithProjection(text_config(vocab_size, eos_id, bos_id, SECOND_TEXT_WIDTH, layers=2, heads=2))
    return first.requires_grad_(False).eval(), second.requires_grad_(False).eval()


def build_transformer():
    """The MMDiT, from a config at demo size."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=PATCH,
        in_channels=4,
        out_channels=4,
        num_layers=DEPTH,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=WIDTH // HEAD_DIM,
        joint_attention_dim=JOINT_DIM,
        caption_projection_dim=WIDTH,
        pooled_projection_dim=JOINT_DIM,
        pos_embed_max_size=64,  # position embeddings for up to 64x64 patches: 1024 px
    )


def make_pipeline(vae, transformer, text_encoder, text_encoder_2, tokenizer):
    """A StableDiffusion3Pipeline over the given components, with no T5 (the pipeline encodes zeros there)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_vae(vae):
    """The UNet demo's VAE in SD3's terms: latents = (z - shift) * scale, with shift 0."""
    vae = copy.deepcopy(vae)
    vae.register_to_config(shift_factor=0.0)
    return vae


def train(work: Path, data, vae, tokenizer, seed: int, steps: int, batch: int, lr: float, eval_every: int,
          density: str):
    """Flow matching as SD3: x_t = (1 - s) x0 + s noise, the transformer predicts noise - x0 at timestep
    1000 s, with s drawn from `density` ("logit_normal" as SD3, or "uniform"); EMA weights are kept."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from .train import after_step, ema_update, log
    from .world import Scene

    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = text_encoders(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    # On a GPU when there is one; noise and timesteps are drawn on the CPU generator either way.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transformer = build_transformer().to(device)
    ema = copy.deepcopy(transformer).eval()
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    ckpt_path = work / "checkpoint.pt"
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        transformer.load_state_dict(ckpt["transformer"])
        ema.load_state_dict(ckpt["ema"])
        text_encoder.load_state_dict(ckpt["text_encoder"])  # its projection is random: keep the run's own
        text_encoder_2.load_state_dict(ckpt["text_encoder_2"])
        opt.load_state_dict(ckpt["opt"])
        torch.set_rng_state(ckpt["torch_rng"])
        step = ckpt["step"]
        log(work, stage="resume", step=step)
    rng = random.Random(seed + 2 + step)
    scenes = [Scene(**s) for s in data["scenes"]]
    latents = data["latents"] * vae.config.scaling_factor  # shift 0
    pipe = make_pipeline(sd3_vae(vae), ema, text_encoder, text_encoder_2, tokenizer).to(device)
    start, run_from = time.time(), step
    while step < steps:
        step += 1
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        # ~10% empty captions teach the unconditional prediction that classifier-free guidance needs.
        captions = ["" if rng.random() < 0.1 else scenes[i].caption(rng) for i in idx]
        with torch.no_grad():  # the pipeline's own encoding, so that training sees what sampling gives
            states, _, pooled, _ = pipe.encode_prompt(
                captions, captions, captions, do_classifier_free_guidance=False, max_sequence_length=MAX_LENGTH
            )
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        if density == "uniform":
            s = torch.rand(batch)
        else:
            s = compute_density_for_timestep_sampling(density, batch, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
        x0, noise, s = x0.to(device), noise.to(device), s.to(device)
        sigma = s.view(-1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(hidden_states=xt, encoder_hidden_states=states, pooled_projections=pooled,
                           timestep=s * 1000).sample
        loss = F.mse_loss(pred, noise - x0)  # SD3's weighting for these densities is 1
        for group in opt.param_groups:  # 300 warm-up steps, then constant
            group["lr"] = lr * min(1.0, step / 300)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        ema_update(((ema, transformer),), step)
        after_step(work, step, steps, loss, (step - run_from) / (time.time() - start), lambda: {
            "transformer": transformer.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "text_encoder": text_encoder.state_dict(), "text_encoder_2": text_encoder_2.state_dict()},
            pipe, eval_every, guidance=4.0)
    return pipe
