"""Colour a grey or sepia picture: colorize() and its streaming form iter_colorize()."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image

from dreamcli.imageops.color import recolor
from dreamcli.io.images import split_alpha, to_8bit, with_alpha
from dreamcli.requests import ColorizeRequest
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

_CONTROLNETS: dict[tuple, object] = {}


def controlnet_pipeline(request: ColorizeRequest):
    """diffusers' ControlNet img2img pipeline over the already-loaded weights, plus the ControlNet.

    The ControlNet (e.g. a brightness/recolour one) is loaded once per process and device; the
    base model's weights are shared through from_pipe, not loaded again.
    """
    import diffusers

    from dreamcli.engine import DTYPES, dtype_kwargs, pipeline_for

    base, loaded = pipeline_for("img2img", request.model)
    key = (request.controlnet, loaded.device, loaded.dtype)
    if key not in _CONTROLNETS:
        from dreamcli.errors import ModelNotFound

        try:
            net = diffusers.ControlNetModel.from_pretrained(request.controlnet, **dtype_kwargs(DTYPES[loaded.dtype]))
        except OSError as e:
            raise ModelNotFound(
                f"ControlNet {request.controlnet!r} cannot be loaded ({type(e).__name__}): give a diffusers "
                "ControlNet folder or a cached repo id, or use a preset without `controlnet`"
            ) from None
        _CONTROLNETS[key] = net.to(loaded.device)
    pipe = diffusers.AutoPipelineForImage2Image.from_pipe(loaded.pipe, controlnet=_CONTROLNETS[key])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = base.scheduler  # the request's scheduler, as pipeline_for set it
    return pipe, loaded


def propose_colour(pipe, loaded, grey: Image.Image, size: tuple[int, int], request: ColorizeRequest, seed: int,
                   callback) -> Image.Image:
    """The model's coloured version of the grey picture (img2img with the colour prompt), at `size`."""
    kwargs = {}
    control = grey.resize(size, Image.Resampling.LANCZOS)
    if request.controlnet:
        kwargs = {"control_image": control,
                  "controlnet_conditioning_scale": request.controlnet_conditioning_scale}
    return draw(pipe, loaded, image=control, **call_kwargs(request, request.full_prompt, seed, callback), **kwargs)


def read_inputs(request: ColorizeRequest) -> tuple[Image.Image, Image.Image | None]:
    """The picture's luma (8-bit "L", laid on white) and its alpha (None when opaque), checked before any
    model loads."""
    source = open_input(request.image)
    if request.width or request.height:  # an explicit size needs no model to be checked
        check_work_size(work_size(source.size, 8, request.width, request.height))
    # Scaled to 8 bits (a 16-bit grey photo stays grey, not white); transparency laid on white.
    flat, alpha = split_alpha(source)
    luma = to_8bit(source)
    return (luma if luma.mode == "L" else flat.convert("L")), alpha


def iter_colorize(request: ColorizeRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield coloured pictures one by one (image i uses seed + i).

    The model sees the picture's luma as a grey RGB image (a sepia tint is dropped, so it does not
    steer the colours) and proposes colour; the output takes its chroma and keeps the input's luma
    to rounding, at the input's full size. A transparent picture keeps its alpha.
    """
    from dreamcli.engine import pipeline_for

    luma, alpha = read_inputs(request)
    grey = luma.convert("RGB")
    if request.controlnet:
        pipe, loaded = controlnet_pipeline(request)
    else:
        pipe, loaded = pipeline_for("img2img", request.model)
    size = work_size(grey.size, native_size(loaded), request.width, request.height)
    check_work_size(size)
    first = base_seed(request.seed)
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step)
        proposal = propose_colour(pipe, loaded, grey, size, request, seed, counter)
        image = with_alpha(recolor(luma, proposal), alpha)
        record = make_image_record("colorize", request, loaded, pipe, seed, index, image,
                                   {"work_size": list(size), "prompt_used": request.full_prompt})
        yield ImageResult(image, seed, index, record)


def colorize(request: ColorizeRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Colour `request.image`; see iter_colorize."""
    return list(iter_colorize(request, on_step))
