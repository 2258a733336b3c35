"""Remove JPEG artefacts: restore() and its streaming form iter_restore().

The model proposes a clean picture (low-strength img2img at the picture's own resolution, in tiles of the
model's native size, optionally guided by a tile ControlNet, with a quarter of the input mixed back in); the
proposal is then projected onto the set of pictures the JPEG file allows (imageops.jpeg), which keeps every
block's coefficients in the bins the file's own came from. The projection never takes the proposal further
from the true picture, so the model may add what JPEG threw away but cannot contradict what the file says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dreamcli.imageops.jpeg import JpegConstraint, NoConstraint, project, read_constraint
from dreamcli.imageops.tiles import process_tiles, tile_boxes
from dreamcli.io.images import split_alpha, with_alpha
from dreamcli.requests import RestoreRequest
from dreamcli.tasks.image_common import (
    ImageResult,
    StepCallback,
    StepCounter,
    base_seed,
    call_kwargs,
    draw,
    make_image_record,
    native_size,
    open_input,
    source_name,
    sub_seed,
)


@dataclass
class RestoreInputs:
    """A picture ready for the model, its alpha, and what its JPEG file allows (None: no projection)."""

    picture: Image.Image  # 8-bit RGB, upright, transparency laid on white
    alpha: Image.Image | None
    constraint: JpegConstraint | None
    note: str | None  # why there is no constraint, for the user


def read_inputs(request: RestoreRequest) -> RestoreInputs:
    """Open the picture and read its JPEG constraint, before any model loads (bad input fails fast).

    A path is read twice: as a picture (upright, as viewers show it) and as JPEG data. An in-memory picture
    has JPEG data only while it is the JPEG Pillow opened (then it is as stored, not turned upright).
    """
    source = open_input(request.image)
    picture, alpha = split_alpha(source)
    on_disk = isinstance(request.image, (str, Path))
    path = request.image if on_disk else getattr(request.image, "filename", "")
    name = str(request.image) if on_disk else "the picture"
    alone = "so the output is the model's proposal alone"
    if not path:
        return RestoreInputs(picture, alpha, None, f"{name} is in memory, not a JPEG file: nothing to project onto, "
                                                   f"{alone}")
    try:
        constraint = read_constraint(path)
    except NoConstraint as e:
        return RestoreInputs(picture, alpha, None, f"{name}: {e}, so there is no JPEG data to project onto: "
                                                   "the output is the model's proposal alone")
    if not on_disk:
        constraint = replace(constraint, orientation=1)
        if picture.size != constraint.size:
            return RestoreInputs(picture, alpha, None, f"{name} no longer matches its JPEG file {path}: {alone}")
    return RestoreInputs(picture, alpha, constraint, None)


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """The picture grown to multiples of `multiple` by repeating its edge pixels (no resampling, which
    would blur the very detail a restoration is after)."""
    w, h = image.size
    pw, ph = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if (pw, ph) == (w, h):
        return image
    pixels = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.pad(pixels, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge"), "RGB")


# The proposal is the model's picture with a quarter of the input mixed back in: two estimates with different
# errors average to a better one. On 32 demo-world pictures (benchmarks/restore.py, strength 0.05) the gain over
# the JPEG after projection was, for weights 0.5 / 0.65 / 0.75 / 0.85 / 1.0: +1.37 / +1.43 / +1.40 / +1.32 /
# +1.14 dB at quality 10 and +2.73 / +3.24 / +3.40 / +3.44 / +3.26 dB at quality 5.
MODEL_WEIGHT = 0.75


def tile_geometry(loaded) -> tuple[int, int]:
    """(tile, overlap): the model's native size, neighbours sharing a quarter of it."""
    tile = native_size(loaded)
    return tile, tile // 4


def propose(pipe, loaded, picture: Image.Image, request: RestoreRequest, seed: int, counter) -> Image.Image:
    """The model's clean version of the picture: img2img at `strength`, tile by tile at full resolution."""
    tile, overlap = tile_geometry(loaded)
    multiple = loaded.spec.size_multiple(loaded.pipe)

    def redraw(part: Image.Image, index: int) -> Image.Image:
        padded = pad_to_multiple(part, multiple)
        extra = {}
        if request.controlnet:  # a tile ControlNet sees the very picture it is asked to keep
            extra = {"control_image": padded, "controlnet_conditioning_scale": request.controlnet_conditioning_scale}
        out = draw(pipe, loaded, image=padded, **call_kwargs(request, request.prompt, sub_seed(seed, index), counter),
                   **extra)
        return out.crop((0, 0, part.width, part.height))

    return process_tiles(picture.copy(), (tile, tile), overlap, redraw)


def iter_restore(request: RestoreRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield restored pictures one by one (image i uses seed + i), each the input's size.

    A JPEG's result re-encodes, with the file's own tables, to the file's coefficients; a picture that
    is not a JPEG gets the model's proposal alone, and a note says so.
    """
    from dreamcli.engine import pipeline_for

    inputs = read_inputs(request)
    if request.controlnet:
        from dreamcli.tasks.colorize import controlnet_pipeline

        pipe, loaded = controlnet_pipeline(request)
    else:
        pipe, loaded = pipeline_for("img2img", request.model)
    tile, overlap = tile_geometry(loaded)
    tiles = len(tile_boxes(inputs.picture.size, (tile, tile), overlap))
    constraint = inputs.constraint
    first = base_seed(request.seed)
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step, tiles)
        drawn = propose(pipe, loaded, inputs.picture, request, seed, counter)
        proposal = Image.blend(inputs.picture, drawn, MODEL_WEIGHT)
        restored = project(proposal, constraint) if constraint is not None else proposal
        image = with_alpha(restored, inputs.alpha)
        jpeg = None if constraint is None else {"subsampling": constraint.subsampling}
        record = make_image_record(
            "restore", request, loaded, pipe, seed, index, image,
            {"method": "img2img + jpeg projection" if jpeg else "img2img", "jpeg": jpeg, "tile": tile,
             "overlap": overlap, "tiles": tiles, "denoising_steps": request.denoising_steps,
             "source": source_name(request.image)},
        )
        yield ImageResult(image, seed, index, record, [inputs.note] if inputs.note else [])


def restore(request: RestoreRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Remove JPEG artefacts from `request.image`; see iter_restore."""
    return list(iter_restore(request, on_step))
