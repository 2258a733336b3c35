"""Redraw a picture from a prompt (A1111's img2img): img2img() and its streaming form iter_img2img()."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image

from dreamcli.io.images import split_alpha, with_alpha
from dreamcli.requests import Img2ImgRequest
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


def read_inputs(request: Img2ImgRequest) -> tuple[Image.Image, Image.Image | None]:
    """The picture laid on white as 8-bit RGB and its alpha (None when opaque), checked before any model loads."""
    source = open_input(request.image)
    if request.width or request.height:  # an explicit size needs no model to be checked
        check_work_size(work_size(source.size, 8, request.width, request.height))
    if request.control:
        from dreamcli.tasks.control import check_controls

        check_controls(request.control)
    return split_alpha(source)


def iter_img2img(request: Img2ImgRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield redrawn pictures one by one (image i uses seed + i).

    The family's img2img pipeline noises the picture to `strength` and denoises it over the last
    steps x strength steps of the schedule. The output has the working size: -W/-H, else the picture's
    shape at the model's native area. A transparent picture keeps its alpha, resized to the output.
    """
    from dreamcli.engine import pipeline_for

    picture, alpha = read_inputs(request)
    pipe, loaded = pipeline_for("img2img", request.model)  # refuses families without an img2img pipeline
    size = work_size(picture.size, native_size(loaded), request.width, request.height)
    check_work_size(size)
    start = picture.resize(size, Image.Resampling.LANCZOS) if picture.size != size else picture
    control, extra = {}, {}
    if request.control:
        from dreamcli.tasks.control import steer

        pipe, loaded, control, extra["control"] = steer("img2img", request, size)
    first = base_seed(request.seed)
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step)
        drawn = draw(pipe, loaded, image=start, **call_kwargs(request, request.prompt, seed, counter), **control)
        image = with_alpha(drawn, alpha)
        record = make_image_record("img2img", request, loaded, pipe, seed, index, image,
                                   {"work_size": list(size), "denoising_steps": request.denoising_steps, **extra})
        yield ImageResult(image, seed, index, record)


def img2img(request: Img2ImgRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Redraw `request.image` from `request.prompt`; see iter_img2img."""
    return list(iter_img2img(request, on_step))
