"""JPEG consistency: the pictures a JPEG file's quantised DCT coefficients allow, and projection onto them.

A JPEG keeps, for each 8x8 block of each colour plane, only round(DCT / Q) for its quantisation table Q.
Every picture whose coefficients fall in the same bins [(q - 1/2) Q, (q + 1/2) Q] encodes to the same file,
and the picture the file was made from is one of them. That set is convex, so moving a guess onto it
(clamping each coefficient into its bin) never takes the guess further from the truth. Here the sets of the
three colour components and the 0-255 box are projected onto in turn, each orthogonally in RGB (the metric
PSNR measures), until the guess lies in all of them (POCS).

Pillow reads the tables and the sampling but not the stored coefficients: read_constraint reads those back
from the decoded planes. project() keeps the result's coefficients a little inside their bins, so that the
8-bit picture re-encodes, with the file's tables and sampling, to the file's coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# JFIF's colour transform, as libjpeg applies it: full-range YCbCr, chroma centred on 128.
RGB_TO_YCC = np.array([
    [0.299, 0.587, 0.114],
    [-0.168735892, -0.331264108, 0.5],
    [0.5, -0.418687589, -0.081312411],
])
CENTRE = np.array([0.0, 128.0, 128.0])
# How far (in DCT units, i.e. grey levels of an 8x8 block's mean times 8) a coefficient read back from the
# decoded pixels may lie from the one stored in the file: decoders round every pixel (+-0.5) and use an
# integer IDCT. Any bin within this distance of the reading is allowed, so a reading next to a bin edge
# (or from a table with Q of 1 or 2) widens its bin instead of picking a wrong one.
READ_TOLERANCE = 1.5
# How far inside its bin a projected coefficient is kept (DCT units; at most a quarter of the bin). A coefficient
# clamped onto a bin's edge lands in the next bin half the time once the picture is rounded to 8 bits and an
# encoder rounds its colour planes again; in a flat block every pixel rounds the same way, which moves the DC
# by up to 8 x 0.5 = 4. On 8 pictures x 4:4:4 / 4:2:0 x qualities 10, 20, 50 (blurred guesses), the re-encoded
# result decoded to the same pixels as the file for 99.3-99.9 % of pixels on average with 4, 97.3-98.2 % with 1.5.
ROUNDING_MARGIN = 4.0
# How far inside its bin a coefficient of the final, rounded picture must be: libjpeg's integer DCT and its
# rounding of ties would otherwise decide a coefficient that sits on a bin's edge.
ENCODER_SLACK = 0.5
# Transposes that turn a stored picture upright (EXIF orientation), and their inverses.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STORED = {**_UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def dct_matrix(n: int = 8) -> np.ndarray:
    """The orthonormal DCT-II matrix: C @ x is the DCT of x, C.T @ X the inverse (JPEG's DCT, exactly)."""
    k, i = np.mgrid[0:n, 0:n].astype(np.float64)
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


DCT = dct_matrix()


def block_dct(plane: np.ndarray) -> np.ndarray:
    """DCT of each 8x8 block of a plane whose sides are multiples of 8: shape (rows, columns, 8, 8)."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    matrix = DCT.astype(plane.dtype, copy=False)  # float32 planes stay float32: half the memory of a photo
    return matrix @ blocks @ matrix.T


def block_idct(coefficients: np.ndarray) -> np.ndarray:
    """The plane whose block DCT is `coefficients` (the inverse of block_dct)."""
    rows, columns = coefficients.shape[:2]
    matrix = DCT.astype(coefficients.dtype, copy=False)
    blocks = matrix.T @ coefficients @ matrix
    return blocks.transpose(0, 2, 1, 3).reshape(rows * 8, columns * 8)


def to_ycc(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) in 0-255 to JFIF YCbCr, as floats (no rounding)."""
    return rgb @ RGB_TO_YCC.T.astype(rgb.dtype) + CENTRE.astype(rgb.dtype)


def pad_edge(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """The plane grown to (height, width) by repeating its last row and column, as JPEG encoders do."""
    h, w = plane.shape
    return np.pad(plane, ((0, height - h), (0, width - w)), mode="edge")


def box_down(plane: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean over fy x fx boxes (libjpeg's chroma downsampling); the sides must be multiples of the box."""
    h, w = plane.shape
    return plane.reshape(h // fy, fy, w // fx, fx).mean(axis=(1, 3))


def _fancy_weights(samples: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's 'fancy' 2x upsampling along one axis: output j is 3/4 of its own sample j // 2 and 1/4 of
    the nearer neighbour, the edge sample standing in for a missing one. Returns (own, neighbour) per output."""
    j = np.arange(outputs)
    own = j // 2
    return own, np.clip(own + np.where(j % 2, 1, -1), 0, samples - 1)


def _solve_tridiagonal(lower: np.ndarray, diagonal: np.ndarray, upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a tridiagonal system for every column of `rhs` at once (Thomas' algorithm, no pivoting: the
    systems here are diagonally dominant)."""
    n = diagonal.shape[0]
    c, d = np.zeros(n), np.zeros_like(rhs)
    c[0], d[0] = upper[0] / diagonal[0], rhs[0] / diagonal[0]
    for i in range(1, n):
        m = diagonal[i] - lower[i] * c[i - 1]
        c[i] = upper[i] / m if i < n - 1 else 0.0
        d[i] = (rhs[i] - lower[i] * d[i - 1]) / m
    for i in range(n - 2, -1, -1):
        d[i] -= c[i] * d[i + 1]
    return d


def _unfancy(values: np.ndarray, samples: int) -> np.ndarray:
    """Least-squares samples (along axis 0) whose fancy 2x upsampling is closest to `values`."""
    outputs = values.shape[0]
    own, neighbour = _fancy_weights(samples, outputs)
    weights = np.zeros((outputs, 2))
    weights[:, 0], weights[:, 1] = 0.75, 0.25
    same = own == neighbour  # at an edge both weights land on one sample
    weights[same] = (1.0, 0.0)
    # Normal equations A^T A x = A^T v: A has two entries a row, so A^T A is tridiagonal.
    diagonal = np.zeros(samples)
    np.add.at(diagonal, own, weights[:, 0] ** 2)
    np.add.at(diagonal, neighbour, weights[:, 1] ** 2)
    off = np.zeros(samples)  # off[i] couples samples i and i + 1
    cross = weights[:, 0] * weights[:, 1]
    np.add.at(off, np.minimum(own, neighbour), np.where(same, 0.0, cross))
    rhs = np.zeros((samples, values.shape[1]))  # values: (outputs, columns)
    np.add.at(rhs, own, weights[:, :1] * values)
    np.add.at(rhs, neighbour, weights[:, 1:] * values)
    lower = np.concatenate([[0.0], off[:-1]])
    return _solve_tridiagonal(lower, diagonal, off, rhs)


def _unsample_axis(values: np.ndarray, factor: int, samples: int, axis: int) -> np.ndarray:
    """Least-squares samples along `axis` from a decoder's upsampled values: factor 2 undoes libjpeg's fancy
    (triangle) upsampling, other factors its plain repetition."""
    values = np.moveaxis(values, axis, 0)
    outputs = values.shape[0]
    if factor == 1:
        out = values
    elif factor == 2:
        out = _unfancy(values, samples)
    else:
        padded = np.concatenate([values, np.repeat(values[-1:], samples * factor - outputs, axis=0)])
        out = padded.reshape(samples, factor, *values.shape[1:]).mean(axis=1)
    return np.moveaxis(out, 0, axis)


class NoConstraint(ValueError):
    """The file gives no JPEG constraint (not a JPEG, or a kind this module does not read); the message says."""


@dataclass(frozen=True)
class Plane:
    """One colour component's constraint: its sampling and, per block and coefficient, the bin's bounds."""

    factor: tuple[int, int]  # (fy, fx): picture pixels per sample, down and across (2, 2 for 4:2:0 chroma)
    samples: tuple[int, int]  # (rows, columns) of samples the picture covers
    table: np.ndarray  # the 8x8 quantisation table, in natural order
    low: np.ndarray  # (block rows, block columns, 8, 8) bounds on the DCT of (samples - 128)
    high: np.ndarray

    @property
    def padded(self) -> tuple[int, int]:
        """Samples in whole blocks (rows, columns)."""
        return self.low.shape[0] * 8, self.low.shape[1] * 8


@dataclass(frozen=True)
class JpegConstraint:
    """Everything a JPEG file says about the picture it was made from."""

    size: tuple[int, int]  # (width, height) as stored, before the EXIF orientation turns it
    orientation: int  # EXIF orientation (1: stored upright)
    planes: tuple[Plane, ...]  # Y (or grey) first, then Cb and Cr

    @property
    def subsampling(self) -> str:
        """The chroma subsampling as people name it (4:4:4, 4:2:2, 4:2:0, ...), or 'grey'."""
        if len(self.planes) == 1:
            return "grey"
        fy, fx = self.planes[1].factor
        return {(1, 1): "4:4:4", (1, 2): "4:2:2", (2, 2): "4:2:0", (2, 1): "4:4:0"}.get((fy, fx), f"{fx}x{fy}")


def _decoded_planes(image: Image.Image) -> list[np.ndarray]:
    """The decoder's own planes, before its YCbCr-to-RGB conversion (exact 8-bit samples, no RGB clipping)."""
    if image.mode == "L":
        return [np.asarray(image, np.float32)]
    return [np.asarray(p, np.float32) for p in image.split()]


def _unclip(samples: np.ndarray, table: np.ndarray, rounds: int = 4) -> np.ndarray:
    """Decoded samples with the decoder's clipping to 0-255 undone, as far as the blocks' coefficients tell.

    Ringing around saturated edges (white on black, pure colours) makes a decoder clip: a sample shown as 255
    stood for 255 or more, which moves the block's coefficients read back from it, often into the wrong bin.
    Samples pinned at 0 or 255 take, instead, what the block's nearest quantised coefficients give there
    (when that lies beyond the clip), a few times over; the other samples are kept.
    """
    low, high = samples <= 0, samples >= 255
    if not (low.any() or high.any()):
        return samples
    current = samples
    for _ in range(rounds):
        rebuilt = block_idct(np.round(block_dct(current - 128.0) / table) * table) + 128.0
        current = np.where(low, np.minimum(rebuilt, 0.0), np.where(high, np.maximum(rebuilt, 255.0), samples))
    return current.astype(samples.dtype)


def read_constraint(path: str | Path) -> JpegConstraint:
    """Read a JPEG's quantisation tables and sampling, and the bins its coefficients lie in.

    Pillow does not hand out the stored coefficients, so they are read back from the decoded planes:
    decoded as YCbCr (no colour conversion), chroma un-upsampled, level-shifted, DCT, divided by the
    table. Readings this close to a bin edge keep both neighbouring bins (READ_TOLERANCE). Blocks that
    the picture's edge cuts (sides not a multiple of 8 samples) are left free: what the encoder padded
    them with is not in the decoded picture. Raises NoConstraint saying why, for files it cannot read.
    """
    from PIL import JpegImagePlugin, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (OSError, UnidentifiedImageError) as e:
        raise NoConstraint(f"cannot read {path} as a picture ({type(e).__name__})") from None
    with image:
        if not isinstance(image, JpegImagePlugin.JpegImageFile):
            raise NoConstraint(f"{image.format or 'this file'} is not a JPEG")
        if image.mode not in ("L", "RGB") or len(image.layer) not in (1, 3):
            raise NoConstraint(f"a {image.mode} JPEG ({len(image.layer)} components) is not read, only grey and YCbCr")
        if image.mode == "RGB" and image.info.get("adobe_transform") == 0:
            raise NoConstraint("an RGB-coded (Adobe, no YCbCr) JPEG is not read")
        orientation = image.getexif().get(0x0112, 1)
        if image.mode == "RGB":
            image.draft("YCbCr", None)  # the decoder's planes, without its rounding to RGB
        width, height = image.size
        image.load()
        decoded = _decoded_planes(image)
        tables = image.quantization
        sampling = [(v, h) for _, h, v, _ in image.layer]  # Pillow's layer tuples: (id, h, v, table id)
        table_ids = [t for *_, t in image.layer]
    vmax, hmax = max(v for v, _ in sampling), max(h for _, h in sampling)
    planes = []
    for values, (v, h), table_id in zip(decoded, sampling, table_ids, strict=True):
        if hmax % h or vmax % v or table_id not in tables:
            raise NoConstraint(f"JPEG sampling {h}x{v} of {hmax}x{vmax} (or its table) is not read")
        fy, fx = vmax // v, hmax // h
        rows, columns = -(-height // fy), -(-width // fx)
        samples = _unsample_axis(_unsample_axis(values, fy, rows, 0), fx, columns, 1).astype(np.float32)
        brows, bcols = -(-rows // 8), -(-columns // 8)
        table = np.asarray(tables[table_id], np.float32).reshape(8, 8)
        padded = pad_edge(samples, brows * 8, bcols * 8)
        if (fy, fx) == (1, 1):  # subsampled chroma was clipped after upsampling, where this cannot see it
            padded = _unclip(padded, table)
        coefficients = block_dct(padded - 128.0)
        low = (np.round((coefficients - READ_TOLERANCE) / table) - 0.5) * table
        high = (np.round((coefficients + READ_TOLERANCE) / table) + 0.5) * table
        if rows % 8:
            low[-1], high[-1] = -np.inf, np.inf
        if columns % 8:
            low[:, -1], high[:, -1] = -np.inf, np.inf
        planes.append(Plane((fy, fx), (rows, columns), table, low, high))
    return JpegConstraint((width, height), orientation if orientation in _UPRIGHT else 1, tuple(planes))


def _project_plane(values: np.ndarray, plane: Plane, margin: float, slack: float) -> tuple[np.ndarray, int]:
    """One plane projected (coefficients clamped `margin` inside their bins), and how many of its coefficients
    were more than `slack` outside them."""
    fy, fx = plane.factor
    height, width = values.shape
    padded_rows, padded_columns = plane.padded
    samples = box_down(pad_edge(values, padded_rows * fy, padded_columns * fx), fy, fx)
    coefficients = block_dct(samples - 128.0)
    # Never past a quarter of the bin, so the margin cannot cross the bin's middle.
    inset, tolerance = np.minimum(margin, plane.table / 4), np.minimum(slack, plane.table / 4)
    outside = int(np.count_nonzero((coefficients < plane.low + tolerance) | (coefficients > plane.high - tolerance)))
    change = block_idct(np.clip(coefficients, plane.low + inset, plane.high - inset) - coefficients)
    change = np.repeat(np.repeat(change, fy, axis=0), fx, axis=1)
    return values + change[:height, :width], outside


def project_planes(planes: list[np.ndarray], constraint: JpegConstraint, margin: float = 0.0) -> list[np.ndarray]:
    """Project full-resolution planes (Y, Cb, Cr or grey; floats, as stored) onto the constraint.

    Each plane is box-downsampled to the component's samples, its block coefficients clamped into their
    bins, and the change spread back evenly over the pixels of each sample: the orthogonal projection
    onto {planes : DCT(downsample(plane)) in the bins}, so the distance to any picture in that set (the
    true one among them) shrinks or stays. A `margin` clamps into bins narrowed by that much each side.
    """
    return [_project_plane(values, plane, margin, 0.0)[0]
            for values, plane in zip(planes, constraint.planes, strict=True)]


def _component_planes(rgb: np.ndarray, constraint: JpegConstraint) -> list[np.ndarray]:
    """The planes the constraint's components are made of: Y, Cb and Cr, or the luma of a grey JPEG."""
    ycc = to_ycc(rgb)
    return [ycc[..., c] for c in range(len(constraint.planes))]


def count_outside(rgb: np.ndarray, constraint: JpegConstraint, slack: float = ENCODER_SLACK) -> int:
    """How many coefficients an encoder would find outside their bins (or closer than `slack` to an edge) in an
    8-bit RGB picture (as stored). Like libjpeg, the colour planes are rounded to whole levels first: in a flat
    area every pixel rounds the same way, which moves a block's low frequencies by up to 4."""
    planes = [np.rint(values) for values in _component_planes(rgb, constraint)]
    return sum(_project_plane(values, plane, 0.0, slack)[1]
               for values, plane in zip(planes, constraint.planes, strict=True))


def _sweep(rgb: np.ndarray, constraint: JpegConstraint, margin: float) -> np.ndarray:
    """One round of projections of an RGB picture (floats, as stored): onto each component's set in turn, then
    into 0-255.

    A component's set constrains one direction of RGB (its row of the colour transform), so its orthogonal
    projection in RGB moves each pixel along that direction only, by the change the plane's own projection
    asks for over the direction's squared length. Each step is an orthogonal projection (in RGB, the metric
    PSNR measures) onto a convex set that holds the true picture: no step takes the picture further from it.
    """
    if len(constraint.planes) == 1:  # grey: the plane is the picture's luma; the result is grey
        luma = rgb @ RGB_TO_YCC[0].astype(rgb.dtype)
        projected = _project_plane(luma, constraint.planes[0], margin, 0.0)[0]
        return np.clip(np.repeat(projected[..., None], 3, axis=-1), 0.0, 255.0)
    for row, plane, centre in zip(RGB_TO_YCC.astype(rgb.dtype), constraint.planes, CENTRE, strict=True):
        values = rgb @ row + float(centre)
        projected = _project_plane(values, plane, margin, 0.0)[0]
        rgb = rgb + (projected - values)[..., None] * (row / (row @ row))
    return np.clip(rgb, 0.0, 255.0)


def project_rgb(rgb: np.ndarray, constraint: JpegConstraint, margin: float = 0.0, sweeps: int = 12,
                settled: float = 0.05) -> np.ndarray:
    """An RGB picture (floats, as stored) moved into the JPEG's set and into 0-255, as floats.

    The sets of the three components and the 0-255 box are convex and all hold the true picture, so
    projecting onto them in turn (POCS) converges to a picture in all of them and never moves away from
    the truth. Stops when a round moves no pixel by more than `settled`, after `sweeps` rounds at most.
    """
    current = rgb.astype(np.float32)
    for _ in range(sweeps):
        moved = _sweep(current, constraint, margin)
        change = float(np.abs(moved - current).max()) if moved.size else 0.0
        current = moved
        if change < settled:
            break
    return current


def project(image: Image.Image, constraint: JpegConstraint, fixes: int = 4) -> Image.Image:
    """The upright RGB picture `image` moved onto the set of pictures the JPEG file allows, as 8-bit RGB.

    The EXIF orientation is undone first (the file's blocks are in its stored orientation) and redone
    after. Coefficients are kept ROUNDING_MARGIN inside their bins, so that rounding to 8 bits and an
    encoder's own rounding leave them there; a block that rounding still pushed out (a flat block rounds
    all its pixels the same way) is projected and rounded again, `fixes` times at most. Re-encoded with
    the file's tables and sampling, the result gives the file's coefficients back.
    """
    stored = image.convert("RGB")
    if constraint.orientation in _STORED:
        stored = stored.transpose(_STORED[constraint.orientation])
    if stored.size != constraint.size:
        raise ValueError(f"the picture is {stored.size}, the JPEG {constraint.size}: they must match")
    current = np.rint(project_rgb(np.asarray(stored, np.float32), constraint, ROUNDING_MARGIN))
    for _ in range(fixes):
        if not count_outside(current, constraint):
            break
        current = np.rint(_sweep(current, constraint, ROUNDING_MARGIN))
    out = Image.fromarray(current.astype(np.uint8), "RGB")
    if constraint.orientation in _UPRIGHT:
        out = out.transpose(_UPRIGHT[constraint.orientation])
    return out


def jpeg_planes(image: Image.Image) -> list[np.ndarray]:
    """An RGB picture's YCbCr planes as floats (what project_planes takes)."""
    ycc = to_ycc(np.asarray(image.convert("RGB"), np.float64))
    return [ycc[..., c] for c in range(3)]
