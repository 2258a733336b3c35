"""Tiny upscaler files in the layouts people download: BasicSR's RRDBNet (Real-ESRGAN, with `params_ema`),
its x2plus variant (pixel-unshuffled input), Real-ESRGAN Compact, and SwinIR; .pth and .safetensors.

Random weights make noise, which tests sizes and loading. A Compact model whose last convolution is zero does
exactly nearest-neighbour enlargement (its forward adds the nearest-upsampled input): a known answer for tiling,
blending and scaling, and a model that keeps the demo world's scenes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _random(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=generator) * 0.05


def rrdb_state(scale: int = 4, features: int = 8, blocks: int = 1, seed: int = 0) -> dict:
    """BasicSR's RRDBNet keys (conv_first, body.N.rdbK.convM, conv_body, conv_up1/2, conv_hr, conv_last).

    The growth channels stay at spandrel's 32. x2 models (RealESRGAN_x2plus) take the picture pixel-unshuffled,
    so their first convolution has 12 input channels.
    """
    r = _random(seed)
    growth = 32
    inputs = {4: 3, 2: 12, 1: 48}[scale]
    state = {"conv_first.weight": r(features, inputs, 3, 3), "conv_first.bias": r(features)}
    for b in range(blocks):
        for k in (1, 2, 3):
            for c in range(1, 6):
                width_in = features + (c - 1) * growth
                width_out = growth if c < 5 else features
                state[f"body.{b}.rdb{k}.conv{c}.weight"] = r(width_out, width_in, 3, 3)
                state[f"body.{b}.rdb{k}.conv{c}.bias"] = r(width_out)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        state[f"{name}.weight"], state[f"{name}.bias"] = r(features, features, 3, 3), r(features)
    state["conv_last.weight"], state["conv_last.bias"] = r(3, features, 3, 3), r(3)
    return state


def compact_state(scale: int = 4, features: int = 4, convs: int = 1, nearest: bool = True, seed: int = 0) -> dict:
    """Real-ESRGAN Compact (SRVGGNetCompact) keys: body.0 conv, body.1 PReLU, ..., the last conv to 3·scale²."""
    r = _random(seed)
    state = {"body.0.weight": r(features, 3, 3, 3), "body.0.bias": r(features), "body.1.weight": r(features)}
    for i in range(convs):
        state[f"body.{2 + 2 * i}.weight"], state[f"body.{2 + 2 * i}.bias"] = r(features, features, 3, 3), r(features)
        state[f"body.{3 + 2 * i}.weight"] = r(features)
    last = 2 + 2 * convs
    state[f"body.{last}.weight"], state[f"body.{last}.bias"] = r(3 * scale * scale, features, 3, 3), r(3 * scale**2)
    if nearest:  # nothing added to the nearest-upsampled input
        state[f"body.{last}.weight"].zero_()
        state[f"body.{last}.bias"].zero_()
    return state


def swinir_state(scale: int = 2) -> dict:
    """A tiny SwinIR (a transformer: its input must be a multiple of its window), from spandrel's own class."""
    from dreamcli.upscalers import import_spandrel

    import_spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    model = SwinIR(upscale=scale, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2], mlp_ratio=2,
                   upsampler="pixelshuffledirect")
    return model.state_dict()


def save_pth(state: dict, path: Path, wrap: str | None = "params_ema") -> Path:
    torch.save({wrap: state} if wrap else state, path)
    return path


def save_safetensors(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
