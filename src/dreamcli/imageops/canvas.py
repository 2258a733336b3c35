"""Outpainting canvases: margins, edge-stretched pre-fill with noise, and the mask over the new area."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from dreamcli.errors import InputError

SIDES = ("left", "right", "top", "bottom")
# The outermost pixels that are stretched over a new margin: wide enough to carry the edge's
# colours and rough structure, narrow enough not to repeat whole objects.
EDGE_STRIP = 8
# Grain added to the pre-fill, in 8-bit levels: denoising needs variation to grow detail from,
# and a flat fill tends to come back flat.
FILL_NOISE = 24.0
# How far the seam correction is smoothed along the seam, as a share of its fade length: enough to
# drop single-pixel noise, little enough to follow a drawn edge (a quarter left steps of 5-7 levels
# where an object the model drew crosses the seam; a sixteenth, 3-5).
SEAM_SMOOTHING = 1 / 16


def round_up8(value: int) -> int:
    """The next multiple of 8 at or above value (the VAE works on 8-pixel blocks)."""
    return -(-value // 8) * 8


@dataclass(frozen=True)
class Margins:
    """Pixels added on each side of a picture."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    @classmethod
    def checked(cls, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0) -> Margins:
        """Validate user margins: none negative, at least one positive."""
        for side, value in zip(SIDES, (left, right, top, bottom), strict=True):
            if value < 0:
                raise InputError(f"--{side} {value} is negative: margins add pixels, use 0 or more")
        if not any((left, right, top, bottom)):
            raise InputError("nothing to extend: give --left, --right, --top, --bottom or --all a positive size")
        return cls(left, right, top, bottom)

    def rounded(self) -> Margins:
        """Each margin rounded up to a multiple of 8."""
        return Margins(*(round_up8(v) for v in self.as_tuple()))

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom)."""
        return (self.left, self.right, self.top, self.bottom)

    def named(self) -> dict[str, int]:
        """{side: pixels} for the sides that grow."""
        return {side: v for side, v in zip(SIDES, self.as_tuple(), strict=True) if v}

    def grown(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size of a (width, height) picture with these margins added."""
        return (size[0] + self.left + self.right, size[1] + self.top + self.bottom)


def _stretch(strip: Image.Image, size: tuple[int, int]) -> Image.Image:
    return strip.resize(size, Image.Resampling.BILINEAR)


def expand_canvas(image: Image.Image, margins: Margins, seed: int = 0) -> Image.Image:
    """The picture on a larger canvas, the new margins pre-filled from its stretched edges plus noise.

    Left and right are filled first, then top and bottom from the widened picture, so corners take
    the colours of the nearest corner of the original.
    """
    image = image.convert("RGB")
    w, h = image.size
    wide = Image.new("RGB", (w + margins.left + margins.right, h))
    wide.paste(image, (margins.left, 0))
    strip = min(EDGE_STRIP, w)
    if margins.left:
        wide.paste(_stretch(image.crop((0, 0, strip, h)), (margins.left, h)), (0, 0))
    if margins.right:
        wide.paste(_stretch(image.crop((w - strip, 0, w, h)), (margins.right, h)), (margins.left + w, 0))
    W = wide.width
    canvas = Image.new("RGB", (W, h + margins.top + margins.bottom))
    canvas.paste(wide, (0, margins.top))
    strip = min(EDGE_STRIP, h)
    if margins.top:
        canvas.paste(_stretch(wide.crop((0, 0, W, strip)), (W, margins.top)), (0, 0))
    if margins.bottom:
        canvas.paste(_stretch(wide.crop((0, h - strip, W, h)), (W, margins.bottom)), (0, margins.top + h))
    # Blur the streaks of the stretched strips, then add grain, in the new area only.
    fill = np.asarray(canvas.filter(ImageFilter.BoxBlur(2)), dtype=np.float32)
    fill += np.random.default_rng(seed).normal(0.0, FILL_NOISE, fill.shape).astype(np.float32)
    out = np.asarray(canvas).copy()
    new = ~old_region(canvas.size, margins)
    out[new] = fill[new].clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def old_region(canvas_size: tuple[int, int], margins: Margins) -> np.ndarray:
    """Boolean (height, width) array: True where the canvas holds the original picture."""
    w, h = canvas_size
    inside = np.zeros((h, w), dtype=bool)
    inside[margins.top:h - margins.bottom, margins.left:w - margins.right] = True
    return inside


def outpaint_mask(canvas_size: tuple[int, int], margins: Margins, band: int) -> Image.Image:
    """255 over the new margins and over a band of `band` pixels into the original along each new edge.

    The band lets the model re-draw the seam so new content continues the old; the original's
    pixels are pasted back afterwards, so the band never changes the output's original region.
    """
    w, h = canvas_size
    keep = np.zeros((h, w), dtype=bool)
    top = margins.top + (band if margins.top else 0)
    bottom = h - margins.bottom - (band if margins.bottom else 0)
    left = margins.left + (band if margins.left else 0)
    right = w - margins.right - (band if margins.right else 0)
    keep[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
    return Image.fromarray(np.where(keep, 0, 255).astype(np.uint8), "L")


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur along the first axis of an (n, channels) array, edges held."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(values, ((radius, radius), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, c], kernel / kernel.sum(), mode="valid") for c in range(values.shape[1])], 1)


def match_seams(drawn: Image.Image, picture: Image.Image, margins: Margins, fade: int) -> Image.Image:
    """The drawn canvas with `picture` pasted back at its place, its new area shifted to meet it at every seam.

    Where the model was asked to keep the picture it still returns it a little changed (its VAE shifts
    colours, and what it drew over the seam band differs from what was there), so pasting the original
    back leaves a step at the seam. The difference between the picture and the drawing along the
    picture's edge (lightly smoothed along the edge, so pixel noise is not drawn out into streaks) is
    added to the new area, fading to nothing `fade` pixels out: the new area starts where the
    original ends and is the model's drawing further out. The picture's own pixels are untouched.
    """
    out = np.asarray(drawn.convert("RGB"), dtype=np.float32).copy()
    keep = np.asarray(picture.convert("RGB"), dtype=np.float32)
    H, W = out.shape[:2]
    h, w = keep.shape[:2]
    top, left = margins.top, margins.left
    diff = keep - out[top:top + h, left:left + w]
    sigma = fade * SEAM_SMOOTHING
    # Only the picture's border along the grown sides matters: every outside pixel takes the
    # difference at its nearest border pixel (corners at the corner).
    edge = np.zeros_like(diff)
    if margins.left:
        edge[:, 0] = _smooth(diff[:, 0], sigma)
    if margins.right:
        edge[:, -1] = _smooth(diff[:, -1], sigma)
    if margins.top:
        edge[0, :] = _smooth(diff[0, :], sigma)
    if margins.bottom:
        edge[-1, :] = _smooth(diff[-1, :], sigma)
    ys, xs = np.arange(H) - top, np.arange(W) - left
    nearest = edge[np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None, :]]
    dy = np.maximum(np.maximum(-ys, ys - (h - 1)), 0)[:, None]
    dx = np.maximum(np.maximum(-xs, xs - (w - 1)), 0)[None, :]
    distance = np.sqrt(dx**2 + dy**2)
    weight = 0.5 * (1 + np.cos(np.pi * np.clip((distance - 1) / max(fade, 1), 0, 1)))  # 1 next to the seam
    out += nearest * weight[..., None]
    out[top:top + h, left:left + w] = keep
    return Image.fromarray(np.rint(out).clip(0, 255).astype(np.uint8), "RGB")


def plan_steps(margins: Margins, step: int) -> list[tuple[str, int]]:
    """Split the margins into (side, pixels) passes of at most `step` pixels (a multiple of 8).

    A model draws well only up to its native size, so a 512 px model extends a picture by 2048 px
    in eight passes of 256, each seeing half old and half new picture.
    """
    step = max(8, step - step % 8)
    passes = []
    for side, total in zip(SIDES, margins.as_tuple(), strict=True):
        # Equal passes (264 px is 136 + 128, not 256 + 8): a sliver of a pass has too little to draw.
        left = total
        for count in range(math.ceil(total / step), 0, -1):
            size = min(left, round_up8(math.ceil(left / count)))
            passes.append((side, size))
            left -= size
    return passes
