"""The roofline's two numbers: UNet FLOPs per denoising step, and the device's measured matmul peak."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dreamcli.bench.paths import sync


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 3, iters: int = 10) -> dict:
    """Best sustained throughput of an n x n x n matmul on the device, in TFLOP/s (best of `repeats`)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):  # kernel selection and clocks settle on the first calls
        a @ b
    best = 0.0
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - started))
    del a, b
    return {"tflops": best / 1e12, "dtype": str(dtype).removeprefix("torch."), "n": n}


def native_size(folder: Path) -> tuple[int, int]:
    """(width, height) a diffusers folder's UNet was made for: latent size x the VAE's downsampling."""
    unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
    vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)  # as diffusers' vae_scale_factor
    side = unet["sample_size"]
    height, width = side if isinstance(side, (list, tuple)) else (side, side)
    return width * scale, height * scale


def unet_flops(folder: Path, batches: tuple[int, ...], size: tuple[int, int], guidance_scale: float) -> dict[int, int]:
    """FLOPs of one UNet call per batch size at this image size, counted by torch's flop counter.

    The UNet is built on the meta device from the folder's config: no memory, no compute, the same
    count on any machine, and attention is counted as its matmuls (CPU attention kernels are not).
    With guidance above 1 the pipeline runs the unconditional and the prompted batch together.
    """
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    folder = Path(folder)
    tokens = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 77)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    counts = {}
    with torch.device("meta"), torch.inference_mode():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        cfg = unet.config
        for batch in batches:
            rows = batch * (2 if guidance_scale > 1 else 1)
            sample = torch.zeros(rows, cfg.in_channels, size[1] // scale, size[0] // scale)
            context = torch.zeros(rows, tokens, cfg.cross_attention_dim)
            extra = {}
            if cfg.addition_embed_type == "text_time":  # SDXL: pooled text and the six size/crop numbers
                pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
                extra["added_cond_kwargs"] = {"text_embeds": torch.zeros(rows, pooled),
                                              "time_ids": torch.zeros(rows, 6)}
            with FlopCounterMode(display=False) as counter:
                unet(sample, torch.tensor(500), encoder_hidden_states=context, **extra)
            counts[batch] = int(counter.get_total_flops())
    return counts
