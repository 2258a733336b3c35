"""Colour from one picture, brightness from another: luma/chroma split in YCbCr with gamut fitting."""

from __future__ import annotations

import numpy as np
from PIL import Image

# ITU-R BT.601 luma weights on gamma-encoded RGB: what JPEG's YCbCr and Pillow's "L" mode use, so the
# luma kept here is the brightness every image tool reports for the picture.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# RGB = Y + CB_TO_RGB * (Cb - 128) + CR_TO_RGB * (Cr - 128)   (JPEG full-range YCbCr)
CB_TO_RGB = np.array([0.0, -0.344136, 1.772], dtype=np.float64)
CR_TO_RGB = np.array([1.402, -0.714136, 0.0], dtype=np.float64)


def luma(image: Image.Image) -> np.ndarray:
    """The picture's luma (0-255 floats, BT.601), whatever its mode (16-bit and float grey scaled to 0-255)."""
    from dreamcli.io.images import to_8bit

    image = to_8bit(image)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float64)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return rgb @ LUMA


def chroma(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The picture's (Cb - 128, Cr - 128) chroma planes as floats."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    y = rgb @ LUMA
    cb = (rgb[..., 2] - y) / 1.772
    cr = (rgb[..., 0] - y) / 1.402
    return cb, cr


# Rows recoloured at a time: the float arrays of a band stay a few tens of megabytes at 4096 px wide,
# where the whole picture at once took gigabytes (seven float64 planes per channel).
BAND_ROWS = 256


def recolor(brightness: Image.Image, colour: Image.Image) -> Image.Image:
    """A picture with the luma of `brightness` and the chroma of `colour` (resized to fit).

    Adding chroma to a very light or dark pixel can push a channel past 0 or 255; clipping there
    would change the brightness, so instead the pixel's chroma is scaled down just enough to stay
    in range: luma is kept to rounding (under half a level per pixel), colour as far as possible.
    """
    from dreamcli.io.images import to_8bit

    brightness = to_8bit(brightness)  # once for the whole picture: a float one's range is the whole one's
    if colour.size != brightness.size:
        # Chroma is smooth, so a model's smaller picture can be enlarged without visible loss.
        colour = colour.resize(brightness.size, Image.Resampling.BICUBIC)
    w, h = brightness.size
    if h <= BAND_ROWS:
        return _recolor(brightness, colour)
    out = Image.new("RGB", brightness.size)
    for top in range(0, h, BAND_ROWS):
        box = (0, top, w, min(top + BAND_ROWS, h))
        out.paste(_recolor(brightness.crop(box), colour.crop(box)), box[:2])
    return out


def _recolor(brightness: Image.Image, colour: Image.Image) -> Image.Image:
    y = luma(brightness)
    cb, cr = chroma(colour)
    delta = cb[..., None] * CB_TO_RGB + cr[..., None] * CR_TO_RGB  # RGB offsets from grey
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(delta > 0, (255.0 - y[..., None]) / delta, np.where(delta < 0, -y[..., None] / delta, np.inf))
    scale = np.clip(room.min(axis=-1), 0.0, 1.0)
    rgb = y[..., None] + delta * scale[..., None]
    return Image.fromarray(np.rint(rgb).clip(0, 255).astype(np.uint8), "RGB")
