"""Overlapping tiles over a large picture, processed one at a time and blended at the seams."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours sharing at least `overlap`.

    The last tile is moved back to end at the edge (sharing more than `overlap` with its neighbour)
    so that every tile has the full size the model works at.
    """
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_boxes(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[Box]:
    """Tile boxes in raster order (rows top to bottom, left to right in a row)."""
    (w, h), (tw, th) = size, tile
    tw, th = min(tw, w), min(th, h)
    return [
        (x, y, x + tw, y + th)
        for y in tile_starts(h, th, overlap)
        for x in tile_starts(w, tw, overlap)
    ]


def ramp(length: int, shared: int) -> np.ndarray:
    """Opacity along one axis of a piece pasted over `shared` finished pixels: rising from 0 to 1 across them."""
    out = np.ones(length, dtype=np.float32)
    shared = min(max(0, shared), length)
    if shared:
        out[:shared] = (np.arange(shared, dtype=np.float32) + 1) / (shared + 1)
    return out


def _opacity(ramp_y: np.ndarray, ramp_x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(np.outer(ramp_y, ramp_x) * 255).astype(np.uint8), "L")


def process_tiles(
    canvas: Image.Image,
    tile: tuple[int, int],
    overlap: int,
    fn: Callable[[Image.Image, int], Image.Image],
) -> Image.Image:
    """Replace each tile of `canvas` by `fn(tile_image, index)`, in place, blending shared pixels.

    Tiles of a row are blended left to right into a strip as tall as a tile, and the strip into the
    canvas top to bottom: two one-way ramps, so no seam is left where four tiles meet. Memory beyond
    the canvas is one strip and one tile, whatever the picture's height. A tile is cut after its
    left and upper neighbours were finished, so the model sees their pixels in the overlap and
    continues them; the ramps hide what difference is left.
    """
    boxes = tile_boxes(canvas.size, tile, overlap)
    rows: dict[int, list[Box]] = {}
    for box in boxes:
        rows.setdefault(box[1], []).append(box)
    index, finished_bottom = 0, 0
    for top, row in rows.items():
        bottom = row[0][3]
        strip = canvas.crop((0, top, canvas.width, bottom))
        finished_right = 0
        for left, _, right, _ in row:
            out = fn(strip.crop((left, 0, right, bottom - top)), index)
            if out.size != (right - left, bottom - top):
                out = out.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
            opacity = _opacity(np.ones(bottom - top, np.float32), ramp(right - left, finished_right - left))
            strip.paste(out.convert(canvas.mode), (left, 0), opacity)
            finished_right, index = right, index + 1
        opacity = _opacity(ramp(bottom - top, finished_bottom - top), np.ones(canvas.width, np.float32))
        canvas.paste(strip, (0, top), opacity)
        finished_bottom = bottom
    return canvas
