"""The roofline's two numbers: denoiser (UNet or transformer) FLOPs per denoising step, and the device's matmul peak."""

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


def _config(folder: Path, component: str) -> dict:
    return json.loads((Path(folder) / component / "config.json").read_text())


def _vae_scale(folder: Path) -> int:
    return 2 ** (len(_config(folder, "vae")["block_out_channels"]) - 1)  # as diffusers' vae_scale_factor


def native_size(folder: Path, default: int | None = None) -> tuple[int, int]:
    """(width, height) a diffusers folder's denoiser was made for: its latent sample size x the VAE's downsampling.

    A denoiser whose config gives no sample size (Flux's) gets `default` pixels per side, else its family's
    native size.
    """
    folder = Path(folder)
    if (folder / "unet").is_dir():
        side = _config(folder, "unet")["sample_size"]
    else:
        side = _config(folder, "transformer").get("sample_size")
    if side is None:
        if default is None:
            from dreamcli import families

            default = families.for_folder(folder).native_size
        return default, default
    height, width = side if isinstance(side, (list, tuple)) else (side, side)
    scale = _vae_scale(folder)
    return width * scale, height * scale


def denoiser_flops(folder: Path, family: str, batches: tuple[int, ...], size: tuple[int, int],
                   guidance_scale: float) -> dict[int, int] | None:
    """FLOPs of one denoiser call per batch size: the UNet's, or an SD3 or Flux transformer's (None for others)."""
    if (Path(folder) / "unet").is_dir():
        return unet_flops(folder, batches, size, guidance_scale)
    return transformer_flops(folder, family, batches, size, guidance_scale)


def unet_flops(folder: Path, batches: tuple[int, ...], size: tuple[int, int], guidance_scale: float) -> dict[int, int]:
    """FLOPs of one UNet call per batch size at this image size, counted by torch's flop counter.

    The UNet is built on the meta device from the folder's config: no memory, no compute, the same
    count on any machine, and attention is counted as its matmuls (CPU attention kernels are not).
    With guidance above 1 the pipeline runs the unconditional and the prompted batch together.
    """
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    folder = Path(folder)
    tokens = _clip_tokens(folder)
    scale = _vae_scale(folder)
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


def _clip_tokens(folder: Path) -> int:
    """The CLIP prompt length (77 for every SD model) its tokenizer pads to."""
    return json.loads((Path(folder) / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 77)


def _t5_tokens(pipeline_class: str) -> int:
    """The T5 prompt length a pipeline pads to when not told otherwise (SD3: 256, Flux: 512)."""
    import inspect

    import diffusers

    call = getattr(diffusers, pipeline_class).__call__
    return int(inspect.signature(call).parameters["max_sequence_length"].default)


def _sd3_inputs(cfg, rows: int, latent: tuple[int, int], text_tokens: int) -> dict:
    return {"hidden_states": torch.zeros(rows, cfg.in_channels, *latent),
            "encoder_hidden_states": torch.zeros(rows, text_tokens, cfg.joint_attention_dim),
            "pooled_projections": torch.zeros(rows, cfg.pooled_projection_dim), "timestep": torch.zeros(rows)}


def _flux_inputs(cfg, rows: int, latent: tuple[int, int], text_tokens: int) -> dict:
    patches = (latent[0] // 2) * (latent[1] // 2)  # latents are packed 2x2 into 64-wide tokens
    inputs = {"hidden_states": torch.zeros(rows, patches, cfg.in_channels),
              "encoder_hidden_states": torch.zeros(rows, text_tokens, cfg.joint_attention_dim),
              "pooled_projections": torch.zeros(rows, cfg.pooled_projection_dim), "timestep": torch.zeros(rows),
              "img_ids": torch.zeros(patches, 3), "txt_ids": torch.zeros(text_tokens, 3)}
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.zeros(rows)
    return inputs


# Transformer class -> (its forward's inputs, whether CLIP's tokens join T5's in the text sequence).
TRANSFORMER_INPUTS = {"SD3Transformer2DModel": (_sd3_inputs, True), "FluxTransformer2DModel": (_flux_inputs, False)}


def transformer_flops(folder: Path, family: str, batches: tuple[int, ...], size: tuple[int, int],
                      guidance_scale: float) -> dict[int, int] | None:
    """FLOPs of one SD3 or Flux transformer call per batch size at this size, counted as unet_flops counts.

    The text sequence is what the pipeline feeds by default: SD3 joins 77 CLIP tokens to 256 T5 tokens,
    Flux reads 512 T5 tokens. A second (unconditional) pass per image is counted only where the family
    runs classifier-free guidance: Flux dev's guidance is an input of the transformer, not a pass.
    None for other transformers (no inputs known to build).
    """
    import types

    import diffusers
    from torch.utils.flop_counter import FlopCounterMode

    from dreamcli import families

    folder = Path(folder)
    config = _config(folder, "transformer")
    known = TRANSFORMER_INPUTS.get(config.get("_class_name"))
    if known is None:
        return None
    make_inputs, with_clip = known
    spec = families.get(family)
    text_tokens = _t5_tokens(spec.pipeline_class("text2img")) + (_clip_tokens(folder) if with_clip else 0)
    scale = _vae_scale(folder)
    latent = (size[1] // scale, size[0] // scale)
    counts = {}
    with torch.device("meta"), torch.inference_mode():
        cls = getattr(diffusers, config["_class_name"])
        model = cls.from_config(cls.load_config(folder / "transformer"))
        # The family reads its guidance kind off a pipeline: a stand-in holding only the denoiser will do.
        cfg_pass = spec.guidance(types.SimpleNamespace(**{spec.denoiser: model})) == "cfg" and guidance_scale > 1
        for batch in batches:
            rows = batch * (2 if cfg_pass else 1)
            with FlopCounterMode(display=False) as counter:
                model(**make_inputs(model.config, rows, latent, text_tokens))
            counts[batch] = int(counter.get_total_flops())
    return counts
