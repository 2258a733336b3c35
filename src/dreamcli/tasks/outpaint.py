"""Extend a picture beyond its borders: outpaint() and its streaming form iter_outpaint()."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image

from dreamcli.imageops.canvas import Margins, expand_canvas, match_seams, outpaint_mask, plan_steps
from dreamcli.io.images import convert, split_alpha, with_alpha
from dreamcli.limits import max_pixels
from dreamcli.requests import OutpaintRequest
from dreamcli.tasks.image_common import (
    ImageResult,
    StepCallback,
    StepCounter,
    base_seed,
    check_output_size,
    make_image_record,
    native_size,
    open_input,
    pixel_limit,
    round8,
    sub_seed,
    work_size,
)
from dreamcli.tasks.inpaint import draw_masked


def seam_band(native: int) -> int:
    """Pixels of the old picture re-drawn along each new edge (a sixteenth of the model's size, >= 8)."""
    return max(8, round8(native / 16))


def plan_passes(size: tuple[int, int], margins: Margins, native: int) -> list[Margins]:
    """The margins of each model pass.

    When the whole new canvas fits the model's native size, one pass does all sides. Otherwise
    each side is extended in passes of at most half the native size, so each pass's window (the
    new strip plus as much old picture) is no larger than the model's native size.
    """
    w, h = margins.grown(size)
    if w <= native and h <= native:
        return [margins]
    return [Margins(**{side: pixels}) for side, pixels in plan_steps(margins, native // 2)]


def window(canvas_size: tuple[int, int], step: Margins, native: int) -> tuple[int, int, int, int]:
    """The part of the canvas one pass draws: the new strip and old picture next to it, at most native wide.

    A single pass over all sides (the canvas fits the native size) takes the whole canvas.
    """
    w, h = canvas_size
    sides = list(step.named())
    if len(sides) != 1:
        return (0, 0, w, h)
    side = sides[0]
    if side == "left":
        return (0, 0, min(w, native), h)
    if side == "right":
        return (max(0, w - native), 0, w, h)
    if side == "top":
        return (0, 0, w, min(h, native))
    return (0, max(0, h - native), w, h)


def outpaint_once(pipe, loaded, picture: Image.Image, step: Margins, native: int, request, seed: int, counter):
    """One pass: grow the canvas by `step`, draw the new strip, keep the old picture's pixels as they were."""
    canvas = expand_canvas(picture, step, seed)
    mask = outpaint_mask(canvas.size, step, seam_band(native))
    box = window(canvas.size, step, native)
    part = canvas.crop(box)
    size = work_size(part.size, native)
    drawn = draw_masked(pipe, loaded, part, mask.crop(box), size, request, seed, counter)
    canvas.paste(drawn, box[:2])
    # The band was only there to draw the seam: the picture goes back as it was, and the new area is
    # shifted to meet it (pasting it back alone left a hard step where the drawing differed).
    return match_seams(canvas, picture, step, 2 * seam_band(native))


def read_inputs(request: OutpaintRequest):
    """(source, its 8-bit RGB laid on white, its alpha or None, the rounded margins, notes), checked before
    any model loads (the output's size too)."""
    limit = pixel_limit(request)
    # Reading is safe up to the general limit even when --max-pixels asks for smaller outputs.
    source = open_input(request.image, limit=max(limit, max_pixels()))
    asked = Margins.checked(request.left, request.right, request.top, request.bottom)
    margins = asked.rounded()
    final_size = margins.grown(source.size)
    check_output_size(final_size, limit)  # the whole canvas, before it is allocated
    original, alpha = split_alpha(source)
    notes = []
    if margins != asked:
        notes.append(
            "margins rounded up to multiples of 8: "
            + ", ".join(f"{side} {v}" for side, v in margins.named().items())
            + f" (output {final_size[0]}x{final_size[1]})"
        )
    return source, original, alpha, margins, notes


def iter_outpaint(request: OutpaintRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield extended pictures one by one (image i uses seed + i).

    Margins are rounded up to multiples of 8 (a note says so). The new area is pre-filled with the
    stretched edges plus noise, masked with a band reaching into the old picture, inpainted, and the
    original pixels pasted back: the original region of the output is identical to the input (alpha
    too, for a transparent picture; the new area is opaque).
    """
    from dreamcli.engine import pipeline_for

    source, original, alpha, margins, notes = read_inputs(request)
    pipe, loaded = pipeline_for("inpaint", request.model)
    native = native_size(loaded)
    passes = plan_passes(original.size, margins, native)
    first = base_seed(request.seed)
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step, len(passes))
        picture = original
        for number, step in enumerate(passes):
            picture = outpaint_once(pipe, loaded, picture, step, native, request, sub_seed(seed, number), counter)
        picture.paste(original, (margins.left, margins.top))
        if alpha is not None:  # the new area is opaque; the original keeps its RGBA exactly
            canvas_alpha = Image.new("L", picture.size, 255)
            canvas_alpha.paste(alpha, (margins.left, margins.top))
            picture = with_alpha(picture, canvas_alpha)
            picture.paste(convert(source, "RGBA"), (margins.left, margins.top))
        record = make_image_record(
            "outpaint", request, loaded, pipe, seed, index, picture,
            {"margins": margins.named(), "passes": len(passes)},
        )
        yield ImageResult(picture, seed, index, record, notes)


def outpaint(request: OutpaintRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Extend `request.image` by the requested margins; see iter_outpaint."""
    return list(iter_outpaint(request, on_step))
