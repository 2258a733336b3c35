"""Enlarge a picture 2x or 4x: upscale() and its streaming form iter_upscale().

Two ways: diffusers' SD x4 upscaler pipeline when the model is one, and otherwise a tiled
img2img upscaler over any checkpoint: resize, then denoise overlapping tiles at low strength, then
back-project so that the result shrinks back to the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from dreamcli.imageops.resample import back_project
from dreamcli.imageops.tiles import process_tiles, tile_boxes
from dreamcli.io.images import split_alpha, with_alpha
from dreamcli.limits import max_pixels
from dreamcli.requests import UpscaleRequest
from dreamcli.tasks.image_common import (
    ImageResult,
    StepCallback,
    StepCounter,
    base_seed,
    call_kwargs,
    check_output_size,
    cpu_generator,
    draw,
    make_image_record,
    native_size,
    open_input,
    pixel_limit,
    round8,
    source_name,
    sub_seed,
)
from dreamcli.upscalers import enlarge

X4_CLASS = "StableDiffusionUpscalePipeline"
_X4_CACHE: dict[tuple, object] = {}


def is_x4_upscaler(model_ref: str) -> bool:
    """True when a model reference is an SD x4 upscaler (its model_index names the upscale pipeline)."""
    from dreamcli.config import PACKAGE_PREFIX
    from dreamcli.engine import REPO_ID, cached_snapshot, resolve_model

    if model_ref.startswith(PACKAGE_PREFIX):
        return False
    path = Path(model_ref).expanduser()
    if path.is_file():
        return False
    index = path / "model_index.json"
    if not index.is_file():
        snapshot = cached_snapshot(model_ref) if not path.exists() and REPO_ID.match(model_ref) else None
        if snapshot is None:
            # Not on disk: only the name can tell (the hub's stabilityai/stable-diffusion-x4-upscaler).
            resolve_model(model_ref)  # raises the usual "not found" errors
            return "x4-upscaler" in model_ref
        index = snapshot / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") == X4_CLASS


class _X4Model:
    """The loaded x4 upscaler with what make_image_record reads off a LoadedModel."""

    def __init__(self, source, pipe, device, dtype):
        self.source, self.pipe, self.device, self.dtype = source, pipe, device, dtype
        self.family = "sd2-x4-upscaler"

    def model_hash(self) -> str:
        """A1111-style short hash of the weights (or the hub commit)."""
        from dreamcli.engine import source_hash

        return source_hash(self.source)


def load_x4_upscaler(request: UpscaleRequest) -> _X4Model:
    """Load diffusers' StableDiffusionUpscalePipeline once per process (it is not a text-to-image model,
    so the engine's AutoPipeline loader does not apply)."""
    import diffusers
    import transformers

    from dreamcli.engine import DTYPES, cached_snapshot, dtype_kwargs, pick_device, pick_dtype, resolve_model

    options = request.model
    source = resolve_model(options.model, options.allow_unsafe_pickle)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    key = (source.location, device, dtype)
    if key not in _X4_CACHE:
        location = source.location
        if source.kind == "hub" and source.revision is not None:
            location = str(cached_snapshot(source.location))
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars are not for our stderr
        pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(location, **dtype_kwargs(DTYPES[dtype]))
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        pipe.own_scheduler_config = dict(pipe.scheduler.config)
        _X4_CACHE[key] = _X4Model(source, pipe, device, dtype)
    loaded = _X4Model(source, _X4_CACHE[key].pipe, device, dtype)
    # A fresh scheduler per request, from the model's own config, as the engine does for the others.
    base = loaded.pipe.own_scheduler_config
    if options.scheduler:
        from dreamcli import families
        from dreamcli.schedulers import SCHEDULERS, check_fits

        check_fits(options.scheduler, families.get("sd2"))  # the x4 upscaler is an SD 2.x-style UNet
        spec = SCHEDULERS[options.scheduler]
        loaded.pipe.scheduler = getattr(diffusers, spec.class_name).from_config(base, **spec.overrides)
    else:
        loaded.pipe.scheduler = getattr(diffusers, base["_class_name"]).from_config(base)
    if options.vae_tiling:
        loaded.pipe.vae.enable_tiling()
    return loaded


def upscale_x4(loaded: _X4Model, image: Image.Image, target: tuple[int, int], request: UpscaleRequest, seed: int,
               counter) -> Image.Image:
    """diffusers' x4 upscaler; a 2x request is drawn at 4x and reduced (sharper than drawing at 2x)."""
    from dreamcli.schedulers import check_steps

    check_steps(loaded.pipe.scheduler.config, request.num_inference_steps)
    out = loaded.pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        image=image,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        noise_level=request.noise_level,
        generator=cpu_generator(seed),
        # This pipeline still has the older per-step callback, not callback_on_step_end.
        callback=lambda step, timestep, _latents: counter(None, step, timestep, {}),
        callback_steps=1,
    ).images[0]
    return out if out.size == target else out.resize(target, Image.Resampling.LANCZOS)


def tile_geometry(request: UpscaleRequest, native: int, target: tuple[int, int]) -> tuple[int, int]:
    """(tile, overlap) in pixels: the model's native size and a quarter of it unless given."""
    from dreamcli.errors import InputError

    tile = request.tile or native
    overlap = request.overlap if request.overlap is not None else tile // 4
    if overlap >= tile:
        raise InputError(f"overlap {overlap} must be less than the tile size {tile}: lower --overlap")
    if min(target) < 8:
        raise InputError(f"the output would be {target[0]}x{target[1]}: too small to upscale (8 px at least)")
    return tile, overlap


def upscale_tiled(pipe, loaded, canvas: Image.Image, tile: int, overlap: int, request: UpscaleRequest, seed: int,
                  counter) -> Image.Image:
    """Denoise the resized picture tile by tile at low strength, blending seams (memory: one tile)."""

    def redraw(part: Image.Image, index: int) -> Image.Image:
        size = (round8(part.width), round8(part.height))  # edge tiles of odd sizes: the VAE wants 8s
        return draw(
            pipe,
            loaded,
            image=part if part.size == size else part.resize(size, Image.Resampling.LANCZOS),
            width=size[0],
            height=size[1],
            **call_kwargs(request, request.prompt, sub_seed(seed, index), counter),
        )

    return process_tiles(canvas, (tile, tile), overlap, redraw)


def read_inputs(request: UpscaleRequest) -> tuple[Image.Image, Image.Image | None, tuple[int, int]]:
    """(the picture laid on white as 8-bit RGB, its alpha or None, the output size), checked before any model
    loads."""
    limit = pixel_limit(request)
    # Reading is safe up to the general limit even when --max-pixels asks for smaller outputs.
    source = open_input(request.image, limit=max(limit, max_pixels()))
    target = (source.width * request.scale, source.height * request.scale)
    check_output_size(target, limit)  # before the enlarged canvas is allocated
    original, alpha = split_alpha(source)
    return original, alpha, target


def iter_upscale(request: UpscaleRequest, on_step: StepCallback | None = None) -> Iterator[ImageResult]:
    """Yield enlarged pictures one by one (image i uses seed + i), exactly `scale` times the input's size.

    A transparent picture keeps its alpha, enlarged with a Lanczos filter.
    """
    from dreamcli.engine import pipeline_for

    original, alpha, target = read_inputs(request)
    first = base_seed(request.seed)
    upscaler = load_upscaler(request) if request.upscaler is not None else None
    if upscaler is not None and not request.redraw:
        image = with_alpha(enlarge(upscaler, original, target, request.tile, request.overlap, on_step), alpha)
        for index in range(request.num_images):  # the same picture each time: an upscaler has no noise
            yield ImageResult(image, first + index, index, upscaler_record(request, upscaler, first + index, index,
                                                                             image))
        return
    if is_x4_upscaler(request.model.model):
        loaded = load_x4_upscaler(request)
        pipe = loaded.pipe
        for index in range(request.num_images):
            seed = first + index
            counter = StepCounter(on_step, steps=request.num_inference_steps)
            image = with_alpha(upscale_x4(loaded, original, target, request, seed, counter), alpha)
            record = make_image_record("upscale", request, loaded, pipe, seed, index, image,
                                       {"method": "sd-x4-upscaler", "source": source_name(request.image)})
            yield ImageResult(image, seed, index, record)
        return
    pipe, loaded = pipeline_for("img2img", request.model)
    tile, overlap = tile_geometry(request, native_size(loaded), target)
    tiles = len(tile_boxes(target, (tile, tile), overlap))
    for index in range(request.num_images):
        seed = first + index
        counter = StepCounter(on_step, tiles)
        canvas = (original.resize(target, Image.Resampling.LANCZOS) if upscaler is None else
                  enlarge(upscaler, original, target))  # A1111's SD upscale: the upscaler, then tiles redrawn
        # Every tile is prompted with the whole picture's prompt, so a tile may invent an object the
        # prompt names; back-projection keeps the model's fine detail and takes such inventions out.
        image = back_project(upscale_tiled(pipe, loaded, canvas, tile, overlap, request, seed, counter), original)
        image = with_alpha(image, alpha)
        record = make_image_record(
            "upscale", request, loaded, pipe, seed, index, image,
            {"method": "tiled-img2img", "tile": tile, "overlap": overlap, "tiles": tiles,
             "consistency": "back-projection", "source": source_name(request.image),
             **({"upscaler": upscaler_facts(upscaler)} if upscaler else {})},
        )
        yield ImageResult(image, seed, index, record)


def load_upscaler(request: UpscaleRequest):
    """The request's upscaler model, on the request's device (cached per process)."""
    from dreamcli import upscalers

    options = request.model
    return upscalers.load(request.upscaler, options.device, options.dtype, options.allow_unsafe_pickle)


def upscaler_facts(upscaler) -> dict:
    """What the record says of an upscaler model: enough to find the same file again."""
    return {"name": upscaler.name, "file": str(upscaler.path), "hash": upscaler.file_hash(),
            "architecture": upscaler.architecture, "scale": upscaler.scale}


def upscaler_record(request: UpscaleRequest, upscaler, seed: int, index: int, image: Image.Image) -> dict:
    """The record of a picture enlarged by an upscaler model alone (no diffusion model ran)."""
    from dataclasses import replace

    from dreamcli.tasks.generate import versions

    own = replace(request, seed=seed, num_images=1)
    return {
        "task": "upscale", "method": "upscaler", "request": own.to_dict(), "seed": seed, "index": index,
        "width": image.width, "height": image.height, "model": str(upscaler.path), "model_name": upscaler.name,
        "model_path": str(upscaler.path), "model_hash": upscaler.file_hash(), "family": "upscaler",
        "guidance": "none", "scheduler": "", "sampler": "", "device": upscaler.device, "dtype": upscaler.dtype,
        "upscaler": upscaler_facts(upscaler), "source": source_name(request.image), "versions": versions(),
    }


def upscale(request: UpscaleRequest, on_step: StepCallback | None = None) -> list[ImageResult]:
    """Enlarge `request.image` by `request.scale`; see iter_upscale."""
    return list(iter_upscale(request, on_step))
