"""Repaint the masked part of a picture: inpaint() and its streaming form iter_inpaint()."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from dreamcli.imageops.masks import check_not_empty, feather, fit_mask, mask_levels, paste_back
from dreamcli.io.images import convert, split_alpha, with_alpha
from dreamcli.requests import InpaintRequest
from dreamcli.tasks.image_common import (
    ImageResult,
    StepCallback,
    StepCounter,
    base_seed,
    call_kwargs,
    check_work_size,
    draw,
    make_image_record,
    native_size,
    open_input,
    work_size,
)


def prepare_mask(request: InpaintRequest, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """The feathered 0-255 mask at the picture's size, and notes (a resize) for the user."""
    levels = mask_levels(open_input(request.mask, "mask"), invert=request.invert_mask)
    levels, warning = fit_mask(levels, size)
    check_not_empty(levels)
    return feather(levels, request.mask_blur), [warning] if warning else []


def model_mask(soft: Image.Image) -> Image.Image:
    """What the model repaints: every pixel the feathered mask touches at all.

    diffusers binarises its mask at one half; giving it the whole feathered area instead means every
    pixel blended into the output comes from the model's drawing, not from its VAE round trip.
    """
    return soft.point(lambda v: 255 if v > 0 else 0)


def draw_masked(pipe, loaded, image: Image.Image, mask: Image.Image, size: tuple[int, int], request, seed: int,
                callback, **extra) -> Image.Image:
    """One call of diffusers' inpaint pipeline at `size`, returned at the input's size."""
    work_w, work_h = size
    out = draw(
        pipe,
        loaded,
        image=image.resize((work_w, work_h), Image.Resampling.LANCZOS),
        mask_image=mask.resize((work_w, work_h), Image.Resampling.NEAREST),
        width=work_w,
        height=work_h,
        **call_kwargs(request, request.prompt, seed, callback),
        **extra,
    )
    return out.resize(image.size, Image.Resampling.LANCZOS) if out.size != image.size else out


def read_inputs(request: InpaintRequest):
    """(source, its 8-bit RGB laid on white, its alpha or None, the feathered mask, notes), checked before any
    model loads."""
    source = open_input(request.image)
    original, alpha = split_alpha(source)  # a grey or 16-bit picture is converted, not refused
    if request.width or request.height:  # an explicit size needs no model to be checked
        check_work_size(work_size(original.size, 8, request.width, request.height))
    soft, notes = prepare_mask(request, original.size)
    if request.control:
        from dreamcli.tasks.control import check_controls

        check_controls(request.control)
    return source, original, alpha, soft, notes


def keep_transparency(source: Image.Image, image: Image.Image, alpha: Image.Image, soft: Image.Image) -> Image.Image:
    """The repainted picture with the input's alpha: repainted pixels opaque, the rest the input's RGBA exactly."""
    a = np.asarray(alpha, np.float32)
    m = np.asarray(soft, np.float32) / 255.0
    blended = Image.fromarray(np.rint(a + (255.0 - a) * m).clip(0, 255).astype(np.uint8), "L")
    out = with_alpha(image, blended)
    out.paste(convert(source, "RGBA"), mask=soft.point(lambda v: 255 if v == 0 else 0))
    return out


def iter_inpaint(request: InpaintRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield repainted pictures one by one (image i uses seed + i).

    The preset's inpainting checkpoint (9-channel UNet) or the base model runs through diffusers'
    inpaint pipeline; pixels where the feathered mask is 0 are the input's, bit for bit (alpha too,
    for a transparent picture; repainted pixels are opaque).
    """
    from dreamcli.engine import pipeline_for

    source, original, alpha, soft, notes = read_inputs(request)
    hard = model_mask(soft)
    pipe, loaded = pipeline_for("inpaint", request.model)
    size = work_size(original.size, native_size(loaded), request.width, request.height)
    check_work_size(size)
    control, extra = {}, {"work_size": list(size)}
    if request.control:
        from dreamcli.tasks.control import steer

        pipe, loaded, control, extra["control"] = steer("inpaint", request, size)
    first = base_seed(request.seed)
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step)
        drawn = draw_masked(pipe, loaded, original, hard, size, request, seed, counter, **control)
        image = paste_back(original, drawn, soft)
        if alpha is not None:
            image = keep_transparency(source, image, alpha, soft)
        record = make_image_record("inpaint", request, loaded, pipe, seed, index, image, extra)
        yield ImageResult(image, seed, index, record, notes)


def inpaint(request: InpaintRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Repaint the masked area of `request.image`; see iter_inpaint."""
    return list(iter_inpaint(request, on_step))
