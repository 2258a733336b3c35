"""Back-projection: make an enlarged picture shrink back to its source exactly, keeping the added detail."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SHRINK = Image.Resampling.BOX  # the mean over each block: what "shrunk back" means for a k-times enlargement
_GROW = Image.Resampling.BICUBIC  # reaches 2 source pixels each side
# Each pass spreads a correction by the bicubic reach, so a band computed with this many extra source
# rows above and below is, in its middle, exactly what the whole picture would give.
_ITERATIONS, _MARGIN = 3, 8


def back_project(result: Image.Image, source: Image.Image, band: int = 64) -> Image.Image:
    """Correct `result` (`source` enlarged an integer number of times) so that shrinking it gives `source`.

    Classic iterative back-projection: the difference between the source and the shrunk result is
    enlarged and added, a few times. What the model drew at scales finer than a source pixel (the
    detail an upscaler is for) passes through; what it changed at the source's own scale (colour
    drift, an object a tile's prompt invented) is taken back out. Works in bands of `band` source
    rows, so the extra memory stays a few megabytes whatever the picture's height.
    """
    scale = result.width // source.width
    if (source.width * scale, source.height * scale) != result.size:
        raise ValueError(f"{result.size} is not an integer enlargement of {source.size}")
    source, result = source.convert("RGB"), result.convert("RGB")
    out = Image.new("RGB", result.size)
    for top in range(0, source.height, band):
        bottom = min(top + band, source.height)
        lo, hi = max(0, top - _MARGIN), min(source.height, bottom + _MARGIN)
        fixed = _back_project_band(result.crop((0, lo * scale, result.width, hi * scale)),
                                   source.crop((0, lo, source.width, hi)))
        out.paste(fixed.crop((0, (top - lo) * scale, result.width, (bottom - lo) * scale)), (0, top * scale))
    return out


def _back_project_band(result: Image.Image, source: Image.Image) -> Image.Image:
    small, big = source.size, result.size
    channels = []
    for src, res in zip(source.split(), result.split(), strict=True):
        target = np.asarray(src, np.float32)
        plane = np.asarray(res, np.float32).copy()
        for _ in range(_ITERATIONS):
            shrunk = np.asarray(Image.fromarray(plane, "F").resize(small, _SHRINK), np.float32)
            plane += np.asarray(Image.fromarray(target - shrunk, "F").resize(big, _GROW), np.float32)
            np.clip(plane, 0, 255, out=plane)
        channels.append(Image.fromarray(np.rint(plane).astype(np.uint8), "L"))
    return Image.merge("RGB", channels)
