"""Train the built-in demo model from scratch on the shapes world and save it as a diffusers folder.

Run: python -m dreamcli.demo.train [--out src/dreamcli/demo/model] [--work build/demo-train] [--steps N]
Every stage caches its result in the work folder, and the diffusion stage checkpoints, so an
interrupted run continues where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import evaluate
from .tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer
from .world import draw, random_scene

RESOLUTION = 128
VAE_CHANNELS = (16, 32, 64, 64)  # 3 downsamples: 8x, as Stable Diffusion
# Four levels take the 16x16 latent down to 2x2, where each cell is a quadrant and the zero padding
# tells it which: the cross-attention there and at 4x4 can turn "on the left" into a place. With
# three levels (a 4x4 bottom) the text never moved the shape in 3000 steps, and the text encoder
# let "left" and "right" drift together, as nothing in the loss told them apart.
UNET_CHANNELS = (32, 64, 96, 128)  # 4.8 M parameters: the weights stay under 30 MB
TEXT_WIDTH = 128
# v-prediction, as SD 2.x: the epsilon objective weighs errors in the clean picture by the
# signal-to-noise ratio, which is ~0.005 at the noisy steps where colour and place are decided,
# so the prompt barely drives the loss (an epsilon run stayed at chance after 1000 steps).
PREDICTION = "v_prediction"
# Zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
# Flawed"): SD's schedule leaves 7% of the picture in the noisiest training input, so the model
# learned to read the shape's place from that leak and, at sampling time, took it from the
# seed's noise instead of the prompt (position stayed at chance, 20%, through 3000 steps, and one
# seed put the shape in the same place whatever the prompt said). With the last step pure noise,
# the place has to come from the text. Sampling then starts at t=999 ("trailing" spacing).
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type=PREDICTION, rescale_betas_zero_snr=True,
)


def log(work: Path, **fields) -> None:
    """Append one JSON line to the training log and echo it."""
    fields["time"] = round(time.time(), 1)
    line = json.dumps(fields)
    print(line, flush=True)
    with open(work / "log.jsonl", "a") as f:
        f.write(line + "\n")


def ema_update(pairs, step: int) -> None:
    """Move each (EMA model, live model) pair's EMA weights toward the live ones (decay warming up to 0.999)."""
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema, live in pairs:
            for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                pe.lerp_(pl, 1 - decay)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a training checkpoint through a temporary file, so a kill mid-write leaves the previous one whole."""
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)


def after_step(work: Path, step: int, steps: int, loss: torch.Tensor, rate: float, state, pipe, eval_every: int,
               guidance: float) -> None:
    """A diffusion loop's bookkeeping: a log line every 50 steps, a checkpoint (`state()`) every 250, and 48
    prompts scored every `eval_every`; the last step gets both."""
    if step % 50 == 0:
        log(work, stage="diffusion", step=step, loss=round(loss.item(), 4), steps_per_s=round(rate, 3))
    if step % 250 == 0 or step == steps:
        save_checkpoint(work / "checkpoint.pt", {**state(), "step": step})
    if step % eval_every == 0 or step == steps:
        started = time.time()
        metrics = evaluate(pipe, count=48, guidance=guidance, steps=20)
        log(work, stage="eval", step=step, **{k: round(v, 3) for k, v in metrics.items()},
            seconds=round(time.time() - started))


def to_tensor(images) -> torch.Tensor:
    """PIL images to a [-1, 1] NCHW float tensor."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(work: Path, seed: int, steps: int = 1500, batch: int = 16):
    """Step 2: an SD-shaped AutoencoderKL learns to reconstruct world pictures (64 px crops: cheaper)."""
    from diffusers import AutoencoderKL

    folder = work / "vae"
    if (folder / "config.json").exists():
        return AutoencoderKL.from_pretrained(folder)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    n = len(VAE_CHANNELS)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(1, steps + 1):
        crops = []
        for _ in range(batch):
            im = draw(random_scene(rng), RESOLUTION, rng)
            x, y = rng.randrange(0, RESOLUTION - 64 + 1, 8), rng.randrange(0, RESOLUTION - 64 + 1, 8)
            crops.append(im.crop((x, y, x + 64, y + 64)))
        x = to_tensor(crops)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        # L1 keeps edges crisp; a tiny KL term keeps the latent space smooth and bounded, as SD's VAE.
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(work, stage="vae", step=step, loss=round(loss.item(), 5), seconds=round(time.time() - start))
    vae.save_pretrained(folder)
    return vae


def encode_dataset(work: Path, vae, seed: int, count: int):
    """Step 3: draw the training pictures once and keep their latents (VAE encoding is the slow part)."""
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path)
    rng = random.Random(seed + 1)
    scenes, latents = [], []
    start = time.time()
    with torch.no_grad():
        for _ in range(0, count, 256):
            chunk = [random_scene(rng) for _ in range(256)]
            images = [draw(s, RESOLUTION, rng) for s in chunk]
            latents.append(vae.encode(to_tensor(images)).latent_dist.mean)
            scenes.extend(chunk)
    latents = torch.cat(latents)[:count]
    # SD scales latents to unit variance; the factor is stored in the VAE config for the pipelines.
    scaling = float(1.0 / latents.std())
    data = {"latents": latents, "scenes": [s.__dict__ for s in scenes[:count]], "scaling_factor": scaling}
    torch.save(data, path)
    log(work, stage="encode", count=count, scaling_factor=round(scaling, 5), seconds=round(time.time() - start))
    return data


def text_config(vocab_size: int, eos_id: int, bos_id: int, width: int = TEXT_WIDTH, layers: int = 3, heads: int = 4):
    """A CLIP text encoder's config at demo size, over the demo tokenizer (padding with the end token, as CLIP)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=width,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def build_models(vocab_size: int, eos_id: int, bos_id: int):
    """Step 4: the SD-shaped text encoder and UNet, from configs, at demo size."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(text_config(vocab_size, eos_id, bos_id))
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return text_encoder, unet


def make_pipeline(vae, text_encoder, unet, tokenizer):
    """A StableDiffusionPipeline over the given components (DDIM, v-prediction, zero terminal SNR)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        **NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_diffusion(work: Path, data, vae, tokenizer, seed: int, steps: int, batch: int, lr: float, eval_every: int,
                    text_from: int):
    """Step 5: the UNet learns to denoise latents given captions (zero-terminal-SNR schedule, v-prediction);
    the text encoder joins at step `text_from`."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    text_encoder, unet = build_models(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    # Until `text_from` the text encoder stays as initialised: random but frozen, it keeps every word
    # distinct. Trained from the start, it let "left" and "right" drift together (their states 10x
    # closer than two colours' after 1500 steps) while the UNet could not yet use them, and position
    # stayed at chance. Once the UNet places shapes by the words, training the encoder too (at a
    # quarter of the rate) sharpens the colours, which a random encoder leaves confusable.
    text_encoder.requires_grad_(False).eval()
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "base_lr": lr, "from": 0}], lr=lr, weight_decay=0.01)

    def start_text_training() -> None:
        text_encoder.requires_grad_(True).train()
        opt.add_param_group({"params": list(text_encoder.parameters()), "base_lr": lr / 4, "from": text_from})

    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    noise_sched = DDPMScheduler(**NOISE_SCHEDULE)
    ckpt_path = work / "checkpoint.pt"
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        ema_unet.load_state_dict(ckpt["ema_unet"])
        ema_text.load_state_dict(ckpt["ema_text"])
        step = ckpt["step"]
        if len(ckpt["opt"]["param_groups"]) > 1:
            start_text_training()
        opt.load_state_dict(ckpt["opt"])
        for group, (base, joined) in zip(opt.param_groups, ((lr, 0), (lr / 4, text_from)), strict=False):
            group.setdefault("base_lr", base)  # checkpoints of before the text encoder's phase lack these
            group.setdefault("from", joined)
        torch.set_rng_state(ckpt["torch_rng"])
        log(work, stage="resume", step=step)
    rng = random.Random(seed + 2 + step)
    from .world import Scene

    scenes = [Scene(**s) for s in data["scenes"]]
    latents = data["latents"] * data["scaling_factor"]
    start, run_from = time.time(), step
    pipe = make_pipeline(vae, ema_text, ema_unet, tokenizer)
    while step < steps:
        if step == text_from and len(opt.param_groups) == 1:
            start_text_training()
        step += 1
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        # ~10% empty captions teach the unconditional prediction that classifier-free guidance needs.
        captions = ["" if rng.random() < 0.1 else scenes[i].caption(rng) for i in idx]
        tokens = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
        ids = tokens.input_ids
        x0 = latents[idx]
        # No offset noise: with zero terminal SNR the model sets a picture's mean colour itself.
        noise = torch.randn_like(x0)
        # Half the batch at the noisy end, where the layout is decided from the text alone.
        t = torch.cat([torch.randint(0, 1000, (batch - batch // 2,)), torch.randint(600, 1000, (batch // 2,))])
        xt = noise_sched.add_noise(x0, noise, t)
        with torch.set_grad_enabled(text_encoder.training):
            states = text_encoder(ids)[0]
        pred = unet(xt, t, states).sample
        loss = F.mse_loss(pred, noise_sched.get_velocity(x0, noise, t))
        for group in opt.param_groups:  # each group warms up over 300 steps from when it joined
            group["lr"] = group["base_lr"] * min(1.0, (step - group["from"]) / 300)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for group in opt.param_groups for q in group["params"]], 1.0)
        opt.step()
        ema_update(((ema_unet, unet), (ema_text, text_encoder)), step)
        after_step(work, step, steps, loss, (step - run_from) / (time.time() - start), lambda: {
            "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
            "ema_text": ema_text.state_dict(), "opt": opt.state_dict()}, pipe, eval_every, guidance=7.5)
    return pipe


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run every stage (each cached in --work) and save the pipeline to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("unet", "dit"), default="unet",
                        help="unet: the demo model (SD 1.x format); dit: demo-dit (SD3 format, over the demo's VAE)")
    parser.add_argument("--out", help="default: src/dreamcli/demo/model, or model-dit")
    parser.add_argument("--work", help="default: build/demo-train, or build/demo-dit-train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, help="default: 4500 (unet), 2900 (dit: the unet's training FLOPs)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, help="default: 6e-4 (unet), 5e-4 (dit)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--text-from", type=int, default=2250,
                        help="unet: step at which the text encoder starts training")
    parser.add_argument("--density", choices=("logit_normal", "uniform"), default="logit_normal",
                        help="dit: how flow-matching times are drawn (SD3's logit-normal, or uniform)")
    args = parser.parse_args(argv)
    dit = args.arch == "dit"
    args.out = args.out or str(Path(__file__).parent / ("model-dit" if dit else "model"))
    args.work = args.work or ("build/demo-dit-train" if dit else "build/demo-train")
    args.steps = args.steps or (2900 if dit else 4500)
    args.lr = args.lr or (5e-4 if dit else 6e-4)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log(work, stage="start", args=vars(args), torch=torch.__version__, threads=torch.get_num_threads())
    # Step 1: the tokenizer, where every world word is a single token.
    write_tokenizer(work / "tokenizer-files")
    tokenizer = load_tokenizer(work / "tokenizer-files")
    if dit:  # steps 2-3: the demo's own VAE, and the same pictures encoded by it
        from diffusers import AutoencoderKL

        from . import dit as dit_model

        vae = AutoencoderKL.from_pretrained(dit_model.UNET_DEMO / "vae")
        data = encode_dataset(work, vae, args.seed, args.images)
        pipe = dit_model.train(work, data, vae, tokenizer, args.seed, args.steps, args.batch, args.lr,
                               args.eval_every, args.density)
    else:
        vae = train_vae(work, args.seed, args.vae_steps)
        data = encode_dataset(work, vae, args.seed, args.images)
        vae.register_to_config(scaling_factor=data["scaling_factor"])
        pipe = train_diffusion(work, data, vae, tokenizer, args.seed, args.steps, args.batch, args.lr,
                               args.eval_every, args.text_from)
    # Step 6: save the EMA weights as a standard diffusers folder with safetensors.
    pipe.save_pretrained(args.out, safe_serialization=True)
    # transformers 5 writes only tokenizer.json; the BPE files keep the folder loadable by 4.x too.
    for folder in ("tokenizer", "tokenizer_2") if dit else ("tokenizer",):
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(work / "tokenizer-files" / name, Path(args.out) / folder / name)
    log(work, stage="saved", out=args.out)


if __name__ == "__main__":
    main()
