"""The demo model's synthetic world: draw captioned shape pictures, and read pictures back into words."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well-separated colours so a nearest-colour reader is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")

# Centre of the shape, as a fraction of the picture, for each position word.
_CENTRES = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "center": (0.5, 0.5),
}
# Shape extent (fraction of the picture side) for each size word.
_EXTENTS = {"small": (0.22, 0.30), "large": (0.40, 0.48)}
PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Words the tokenizer must know as single tokens. "sks" is the rare identifier dream tune binds
# new subjects to: it is in the vocabulary but never seen in training, as in real SD models.
VOCABULARY = sorted(
    set(COLORS) | set(SHAPES) | set(POSITIONS) | set(SIZES)
    | {"a", "an", "the", "on", "in", "at", "of", "and", "background", "shape", "photo", "picture", "sks"}
)


@dataclass(frozen=True)
class Scene:
    """One picture's content: a shape of a colour, size and position on a background colour."""

    shape: str
    color: str
    background: str
    position: str
    size: str

    def caption(self, rng: random.Random | None = None) -> str:
        """The full caption, or with attributes dropped at random when an rng is given."""
        keep_size = keep_pos = keep_bg = keep_color = True
        if rng is not None:
            keep_size = rng.random() < 0.5
            keep_pos = rng.random() < 0.7
            keep_bg = rng.random() < 0.7
            keep_color = rng.random() < 0.85
        words = []
        if keep_size:
            words.append(self.size)
        if keep_color:
            words.append(self.color)
        words.append(self.shape)
        if keep_pos:
            words.append(PHRASES[self.position])
        if keep_bg:
            words += ["on", article(self.background), self.background, "background"]
        return " ".join([article(words[0])] + words)


def article(word: str) -> str:
    """'an' before a vowel sound, else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


def random_scene(rng: random.Random) -> Scene:
    """A uniformly drawn scene (shape and background colours always differ)."""
    color, background = rng.sample(list(COLORS), 2)
    return Scene(rng.choice(SHAPES), color, background, rng.choice(POSITIONS), rng.choice(SIZES))


def draw(scene: Scene, size: int = 128, rng: random.Random | None = None) -> Image.Image:
    """Render a scene; an rng adds small jitter to the shape's place and extent."""
    rng = rng or random.Random(0)
    img = Image.new("RGB", (size, size), COLORS[scene.background])
    pen = ImageDraw.Draw(img)
    cx, cy = _CENTRES[scene.position]
    cx += rng.uniform(-0.04, 0.04)
    cy += rng.uniform(-0.04, 0.04)
    half = rng.uniform(*_EXTENTS[scene.size]) * size / 2
    x, y = cx * size, cy * size
    box = [x - half, y - half, x + half, y + half]
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    return img


def draw_cross(background: str, rng: random.Random, color: str = "orange", size: int = 128) -> Image.Image:
    """A shape the world never had, a plus-shaped cross: the stand-in for a user's subject when the demo
    model is taught something new (`dream tune` tests and the README walkthrough)."""
    image = Image.new("RGB", (size, size), COLORS[background])
    pen = ImageDraw.Draw(image)
    scale = size / 128
    cx, cy = (64 + rng.randint(-14, 14)) * scale, (64 + rng.randint(-14, 14)) * scale
    half, arm = rng.randint(26, 34) * scale, 9 * scale
    pen.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=COLORS[color])
    pen.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=COLORS[color])
    return image


def nearest_color(rgb) -> str:
    """Name of the palette colour closest to an RGB triple."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLORS, key=lambda name: float(np.sum((np.asarray(COLORS[name]) - rgb) ** 2)))


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected True region of a boolean mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for sy, sx in zip(*np.nonzero(mask), strict=True):
        if seen[sy, sx]:
            continue
        region, queue = [], deque([(sy, sx)])
        seen[sy, sx] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


@dataclass(frozen=True)
class Reading:
    """What the pixel reader sees in a picture (None where there is no shape)."""

    background: str
    color: str | None
    shape: str | None
    position: str | None
    size: str | None


def read(image: Image.Image) -> Reading:
    """Read a picture back: background from the border, the shape from the largest other region."""
    px = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = px.shape
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    background = nearest_color(np.median(border, axis=0))
    # A pixel belongs to the shape when its nearest palette colour is not the background's.
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float64)
    nearest = np.argmin(((px[:, :, None, :] - palette[None, None]) ** 2).sum(-1), axis=-1)
    region = _largest_region(nearest != names.index(background))
    area = int(region.sum())
    if area < 0.01 * h * w:
        return Reading(background, None, None, None, None)
    counts = np.bincount(nearest[region], minlength=len(names))
    color = names[int(np.argmax(counts))]
    ys, xs = np.nonzero(region)
    dx, dy = xs.mean() / w - 0.5, ys.mean() / h - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        position = "center"
    elif abs(dx) > abs(dy):
        position = "left" if dx < 0 else "right"
    else:
        position = "top" if dy < 0 else "bottom"
    # Fill of the bounding box tells the shape: square ~1, circle ~pi/4, triangle ~1/2.
    fill = area / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / max(h, w)
    size = "large" if extent > 0.35 else "small"
    return Reading(background, color, shape, position, size)
