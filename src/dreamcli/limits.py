"""How much work one request may ask for: a pixel limit set by $DREAMCLI_MAX_PIXELS or config `max_pixels`."""

from __future__ import annotations

import os

from dreamcli.errors import InputError

# 16 megapixels (4096x4096): four times SDXL's 1024x1024 x4 upscale still fits, and a picture of that
# size as float32 RGB is 200 MB. Past it, the VAE and attention memory grows beyond most machines.
DEFAULT_MAX_PIXELS = 4096 * 4096
ENV_VAR = "DREAMCLI_MAX_PIXELS"


def max_pixels() -> int:
    """The largest width x height any picture read, worked on or written may have."""
    raw = os.environ.get(ENV_VAR)
    source = f"${ENV_VAR}"
    if raw is None:
        from dreamcli.config import load_user_config

        raw = load_user_config().get("max_pixels")
        source = "config max_pixels"
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise InputError(f"{source} is {raw!r}: give a positive whole number of pixels, e.g. {DEFAULT_MAX_PIXELS}")
    return value


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse work on a picture larger than max_pixels(), before anything is allocated for it."""
    limit = max_pixels()
    if width * height > limit:
        raise InputError(
            f"{what} is {width}x{height} = {_amount(width * height)}, over the limit of {_amount(limit)}: "
            f"use a smaller picture or size, or raise ${ENV_VAR} if this machine has the memory"
        )
