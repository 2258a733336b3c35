"""Training images: EXIF rotation, 8-bit RGB conversion, resize and crop to the training resolution."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamcli.io.images import load_rgb


def load_training_image(path: Path) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as 8-bit RGB: 16-bit and float pictures scaled,
    transparency laid on white; one over the pixel limit is refused before it is decoded."""
    return load_rgb(path)


def fit(image: Image.Image, resolution: int, rng: random.Random | None = None) -> Image.Image:
    """Resize the short side to `resolution` and crop a square: centred, or random (after a coin-flip
    mirror) when an rng is given."""
    return fit_recorded(image, resolution, rng)[0]


def fit_recorded(image: Image.Image, resolution: int, rng: random.Random | None = None):
    """fit(), also returning the crop's (top, left) in the resized picture.

    The mirror comes before the crop, so the recorded corner is where the crop sits in the picture the model
    sees (SDXL is told it: a crop far from the top-left teaches cut-off subjects).
    """
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    w, h = image.size
    if rng is None:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a CHW float tensor in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def training_tensor(path: Path, resolution: int, rng: random.Random | None = None) -> torch.Tensor:
    """One training image, ready for the VAE."""
    return training_example(path, resolution, rng)[0]


def training_example(
    path: Path, resolution: int, rng: random.Random | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training image ready for the VAE, and its geometry: original (height, width) and crop (top, left)."""
    image = load_training_image(path)
    width, height = image.size
    fitted, (top, left) = fit_recorded(image, resolution, rng)
    return to_tensor(fitted), torch.tensor([height, width, top, left], dtype=torch.float32)
