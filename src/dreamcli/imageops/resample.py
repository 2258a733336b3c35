"""Back-projection: make an enlarged picture shrink back to its source exactly, keeping the added detail."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SHRINK = Image.Resampling.BOX  # the mean over each block: what "shrunk back" means for a k-times enlargement
_GROW = Image.Resampling.BICUBIC


def back_project(result: Image.Image, source: Image.Image, iterations: int = 3) -> Image.Image:
    """Correct `result` (an enlargement of `source`) so that shrinking it gives `source` back.

    Classic iterative back-projection: the difference between the source and the shrunk result is
    enlarged and added, a few times. What the model drew at scales finer than a source pixel (the
    detail an upscaler is for) passes through; what it changed at the source's own scale (colour
    drift, an object a tile's prompt invented) is taken back out. Works one channel at a time, so
    the extra memory is two float planes of the output size.
    """
    small, big = source.size, result.size
    channels = []
    for src, out in zip(source.convert("RGB").split(), result.convert("RGB").split(), strict=True):
        target = np.asarray(src, np.float32)
        plane = np.asarray(out, np.float32)
        for _ in range(iterations):
            shrunk = np.asarray(Image.fromarray(plane, "F").resize(small, _SHRINK), np.float32)
            error = Image.fromarray(target - shrunk, "F").resize(big, _GROW)
            plane = np.clip(plane + np.asarray(error, np.float32), 0, 255)
        channels.append(Image.fromarray(np.rint(plane).astype(np.uint8), "L"))
    return Image.merge("RGB", channels)
