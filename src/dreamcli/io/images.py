"""Loading user images safely: size checked before decoding, upright, and converted to 8 bits by scaling."""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dreamcli.errors import InputError

# Formats of photos and pictures people work on. Pillow can open more, but some of its readers run
# outside programs (EPS runs Ghostscript, which executes the file) or are rarely exercised decoders.
READABLE = ("PNG", "JPEG", "MPO", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM", "TGA")
READABLE_TEXT = "PNG, JPEG, WebP, AVIF, TIFF, BMP, GIF, PPM or TGA"
# What Pillow raises for a damaged file, besides OSError: broken headers, chunks and EXIF blocks.
BROKEN = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)
ORIENTATION = 0x0112  # EXIF tag: how a camera held sideways says which way is up
EXIF_IFD = 0x8769  # the EXIF sub-directory (where UserComment lives)
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes with more than 8 bits per sample: Pillow's convert() clips them to 0-255 (a 16-bit photo turns
# white), so they are scaled here instead.
WIDE_MODES = ("I", "F")


class PictureTooLarge(InputError):
    """A picture with more pixels than the limit (a decompression bomb, or just too large to work on)."""


def _formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin, so the check below sees AVIF where this Pillow has it
    return tuple(f for f in READABLE if f in Image.OPEN)


def check_picture_size(size: tuple[int, int], name: str, limit: int | None = None) -> None:
    """Refuse a picture over the pixel limit ($DREAMCLI_MAX_PIXELS unless `limit` is given)."""
    from dreamcli.limits import check_pixels, max_pixels

    w, h = size
    if limit is None:
        max_pixels()  # a malformed $DREAMCLI_MAX_PIXELS is its own error, raised as such
        try:
            check_pixels(w, h, name)
        except InputError as e:
            raise PictureTooLarge(str(e)) from None
    elif w * h > limit:
        raise PictureTooLarge(
            f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the limit of {limit / 1e6:.1f}: "
            "use a smaller picture, or raise --max-pixels"
        )


def open_image(path: str | Path, what: str = "image", limit: int | None = None, upright: bool = True) -> Image.Image:
    """Open an image file fully (so errors surface here), keeping its mode and metadata.

    The size in the file's header is checked against the pixel limit before any pixel is decoded: a
    small file can declare a picture of billions of pixels. `upright` applies the EXIF orientation,
    so the pixels are the way every viewer shows them.
    """
    path = Path(path)
    name = f"{what} {path}"
    if not path.exists():
        raise InputError(f"{name} does not exist")
    if path.is_dir():
        raise InputError(f"{name} is a folder: give an image file")
    with warnings.catch_warnings():
        # Pillow warns from 89 megapixels up (our own limit decides instead) and about damaged metadata
        # (which is ignored here): either would be a second line on stderr after our one.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL\.")
        return _open(path, name, limit, upright)


def _open(path: Path, name: str, limit: int | None, upright: bool) -> Image.Image:
    try:
        file = open(path, "rb")  # ours to close: Pillow keeps a multi-frame file (GIF, TIFF) open otherwise
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror or e}") from None
    with file:
        try:
            image = Image.open(file, formats=_formats())
        except Image.DecompressionBombError as e:
            # Pillow's own guard, from 179 megapixels, fires inside open() before the size is known to us.
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
            raise PictureTooLarge(
                f"{name} declares a picture of {size} (a decompression bomb, or far too large to work on): "
                "use a smaller picture"
            ) from None
        except UnidentifiedImageError:
            raise InputError(f"{name} is not an image dream can read (use {READABLE_TEXT})") from None
        except BROKEN as e:
            raise InputError(f"cannot read {name}: {e or type(e).__name__} (a damaged file?)") from None
        check_picture_size(image.size, name, limit)
        try:
            image.load()
        except BROKEN as e:
            raise InputError(f"cannot read {name}: {e or type(e).__name__} (a damaged file?)") from None
        read_exif(image)  # while the file is open: TIFF reads its tags from it; later calls use this copy
        return make_upright(image) if upright else image


def read_exif(image: Image.Image) -> tuple[Image.Exif, dict]:
    """The picture's EXIF tags and its EXIF sub-IFD; empty ones when the block is missing or damaged
    (EXIF is optional, so damage there is no reason to refuse the picture)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        try:
            exif = image.getexif()
            return exif, dict(exif.get_ifd(EXIF_IFD))
        except BROKEN:
            return Image.Exif(), {}


def make_upright(image: Image.Image) -> Image.Image:
    """The picture turned as its EXIF orientation says; as stored when the tag is missing, odd or damaged."""
    orientation = read_exif(image)[0].get(ORIENTATION, 1)
    turn = _TURNS.get(orientation) if isinstance(orientation, int) else None
    return image if turn is None else image.transpose(turn)  # transpose keeps the palette and info


def to_8bit(image: Image.Image) -> Image.Image:
    """An 8-bit picture: 16-bit and float grey ("I;16", "I", "F") scaled to 0-255 ("L"), others as they are.

    16-bit samples are divided by 257 (65535 -> 255). 32-bit integer and float pictures carry no
    declared range: values within 0-1 (floats), 0-255 or 0-65535 are read as that range, anything
    else is stretched from its minimum to its maximum. Non-finite floats become 0.
    """
    if not (image.mode in WIDE_MODES or image.mode.startswith("I;16")):
        return image
    values = np.asarray(image).astype(np.float32)  # float32 holds every 16-bit value exactly
    values[~np.isfinite(values)] = 0.0
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    bottom = 0.0
    if image.mode.startswith("I;16") and low >= 0:
        top = 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        top = 1.0
    elif low >= 0 and high <= 255:
        top = 255.0
    elif low >= 0 and high <= 65535:
        top = 65535.0
    else:
        bottom, top = low, high
    span = max(top - bottom, 1e-12)
    values -= bottom
    values *= 255.0 / span
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), "L")


def convert(image: Image.Image, mode: str) -> Image.Image:
    """`image.convert(mode)` after scaling to 8 bits; a mode Pillow cannot convert is one clear error."""
    image = to_8bit(image)
    if image.mode == mode:
        return image
    try:
        return image.convert(mode)
    except ValueError:
        raise InputError(
            f"a picture in colour mode {image.mode} cannot be turned into {mode}: save it as an 8-bit RGB PNG"
        ) from None


def has_alpha(image: Image.Image) -> bool:
    """True when the picture has an alpha channel or a transparent colour (palette or grey tRNS)."""
    return "A" in image.getbands() or "a" in image.mode or image.info.get("transparency") is not None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for the model: wide samples scaled, grey, palette, CMYK converted, transparency laid on white.

    Transparent pixels hold arbitrary colours (often black); white is what a viewer shows behind them.
    """
    image = to_8bit(image)
    if image.mode == "RGB":
        return image
    if has_alpha(image):
        rgba = convert(image, "RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return convert(image, "RGB")


def load_rgb(path: str | Path, what: str = "image", limit: int | None = None) -> Image.Image:
    """Open an image upright as 8-bit RGB (see open_image and to_rgb)."""
    return to_rgb(open_image(path, what, limit))


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The picture as the model sees it (8-bit RGB, laid on white) and its alpha channel (None when opaque).

    A picture whose alpha is opaque everywhere (an RGBA screenshot) counts as opaque: its output stays RGB.
    """
    image = to_8bit(image)
    alpha = None
    if has_alpha(image):
        alpha = convert(image, "RGBA").getchannel("A")
        if alpha.getextrema()[0] == 255:
            alpha = None
    return to_rgb(image), alpha


def with_alpha(flat: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """Put an alpha channel back on an RGB result drawn from a picture laid on white (see split_alpha).

    The colours are un-blended from the white, so that the RGBA result laid on white is `flat` again (to
    rounding), and on any other background its soft edges carry no white fringe. `alpha` is resized to
    `flat` when sizes differ (upscale). None returns `flat` as it is.
    """
    if alpha is None:
        return flat
    if alpha.size != flat.size:
        alpha = alpha.resize(flat.size, Image.Resampling.LANCZOS)
    rgb = np.asarray(flat.convert("RGB"), np.float32)
    a = np.asarray(alpha, np.float32)[..., None] / 255.0
    # flat = colour * a + 255 * (1 - a); where a is 0 the colour is invisible: keep flat's.
    straight = np.where(a > 0, (rgb - 255.0 * (1.0 - a)) / np.maximum(a, 1e-6), rgb)
    straight = np.clip(np.rint(straight), 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([straight, np.asarray(alpha, np.uint8)]), "RGBA")
