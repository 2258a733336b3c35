"""Inpainting masks: read any mode, match the image, feather, and paste the original back."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from dreamcli.errors import InputError

# Two sizes "have the same aspect" when they differ by no more than rounding would explain.
ASPECT_TOLERANCE = 0.01


def mask_levels(mask: Image.Image, invert: bool = False) -> Image.Image:
    """An 8-bit mask where 255 means repaint and 0 means keep, from an image of any mode.

    A mask with transparency (a stroke layer painted over nothing) is read by its opacity; an
    opaque one by its brightness, so white marks the area to repaint. A 16-bit or float mask is
    scaled to 8 bits (half-grey stays half), not clipped.
    """
    from dreamcli.io.images import convert, has_alpha

    if has_alpha(mask):
        alpha = convert(mask, "RGBA").getchannel("A")
        level = alpha if alpha.getextrema()[0] < 255 else convert(mask, "L")
    else:
        level = convert(mask, "L")
    if invert:
        level = Image.eval(level, lambda v: 255 - v)
    return level


def fit_mask(mask: Image.Image, size: tuple[int, int], name: str = "mask") -> tuple[Image.Image, str | None]:
    """Resize a mask to the image size when only the scale differs; another aspect is an error.

    Returns the mask and a warning to show (None when no resize was needed).
    """
    if mask.size == tuple(size):
        return mask, None
    (mw, mh), (w, h) = mask.size, size
    if abs((mw / mh) / (w / h) - 1) > ASPECT_TOLERANCE:
        raise InputError(
            f"{name} is {mw}x{mh} but the image is {w}x{h}: their aspect ratios differ; "
            "give a mask of the image's shape"
        )
    warning = f"{name} is {mw}x{mh}, the image {w}x{h}: the mask was resized to match"
    return mask.resize((w, h), Image.Resampling.BILINEAR), warning


def check_not_empty(mask: Image.Image, name: str = "mask") -> None:
    """An all-black mask asks for nothing to change: refuse it rather than run the model for nothing."""
    if mask.getextrema()[1] == 0:
        raise InputError(
            f"{name} is all black: nothing to repaint (white or opaque marks the area to repaint; "
            "--invert-mask swaps black and white)"
        )


def feather(mask: Image.Image, radius: float) -> Image.Image:
    """Soften a mask's edge with a Gaussian blur of this radius in pixels (0 keeps it hard).

    The blur spreads outwards as well as inwards, so pixels just outside the drawn edge blend
    towards the new content instead of meeting it at a hard seam.
    """
    if radius <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur(radius))


def paste_back(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend the generated picture into the original through the mask.

    Where the mask is 0 the result is the original, bit for bit: the model's VAE round trip never
    touches what the user did not ask to change. Where it is 255 the result is the generated pixel.
    """
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    keep = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    weight = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    out = np.rint(keep + (new - keep) * weight).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")
