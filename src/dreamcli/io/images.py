"""Loading user images with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dreamcli.errors import InputError


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully (so errors surface here), keeping its mode and metadata."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    if path.is_dir():
        raise InputError(f"image {path} is a folder: give an image file")
    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read (use PNG, JPEG or WebP)") from None
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    return image


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB (grey, palette, RGBA and CMYK are converted)."""
    image = open_image(path)
    return image if image.mode == "RGB" else image.convert("RGB")
