"""What the image-to-image tasks share: input loading, working sizes, seeds, progress and records."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from dreamcli.errors import InputError
from dreamcli.tasks.generate import StepCallback


@dataclass
class ImageResult:
    """One output picture, its seed, the record that reproduces it, and notes for the user."""

    image: Image.Image
    seed: int
    index: int
    record: dict
    notes: list[str] = field(default_factory=list)  # e.g. "the mask was resized": the CLI shows them


def open_input(source, what: str = "image", limit: int | None = None) -> Image.Image:
    """A path or PIL image, opened upright with errors that name the file and say what is wrong.

    A picture over the pixel limit (`limit`, else $DREAMCLI_MAX_PIXELS) is refused from its header,
    before its pixels are decoded.
    """
    from dreamcli.io.images import check_picture_size, open_image

    if isinstance(source, Image.Image):
        check_picture_size(source.size, f"the {what}", limit)
        source.load()
        return source
    if isinstance(source, (str, Path)):
        return open_image(source, what, limit)
    raise InputError(f"{what} must be a file path or a PIL image, got {type(source).__name__}")


def source_name(source) -> str:
    """A short name of the input for output file names ("image" for an in-memory picture)."""
    return Path(source).stem if isinstance(source, (str, Path)) else "image"


def native_size(loaded) -> int:
    """The side in pixels the model was trained at (its family reads it off the loaded configs)."""
    return int(loaded.spec.native(loaded.pipe))


def round8(value: float) -> int:
    """The nearest multiple of 8, at least 8 (the VAE works on 8-pixel blocks)."""
    return max(8, int(round(value / 8)) * 8)


def work_size(size: tuple[int, int], native: int, width: int | None = None, height: int | None = None):
    """The (width, height) the model draws at: the picture's shape at the model's native area.

    A model draws best near the area it was trained at, whatever the input's resolution; an explicit
    width or height wins (one alone keeps the picture's aspect).
    """
    w, h = size
    if width and height:
        return width, height
    if width:
        return width, round8(width * h / w)
    if height:
        return round8(height * w / h), height
    scale = math.sqrt(native * native / (w * h))
    return round8(w * scale), round8(h * scale)


def pixel_limit(request) -> int:
    """The most pixels a request may read, work on or write: its own max_pixels (the --max-pixels flag
    wins, as flags win over config), else limits.max_pixels()."""
    from dreamcli.limits import max_pixels

    return getattr(request, "max_pixels", None) or max_pixels()


def check_output_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an output over the pixel limit, naming the flag that raises it."""
    from dreamcli.limits import ENV_VAR

    w, h = size
    if w * h > max_pixels:
        raise InputError(
            f"the output would be {w}x{h} ({w * h / 1e6:.1f} MP), over the limit of {max_pixels / 1e6:.1f} MP: "
            f"pass --max-pixels {w * h} (or more, or set ${ENV_VAR}) to allow it"
        )


def check_work_size(size: tuple[int, int]) -> None:
    """Refuse a working size (-W/-H) over the pixel limit before the model allocates for it."""
    from dreamcli.limits import check_pixels

    check_pixels(size[0], size[1], "the working size")  # the words requests.py uses for -W x -H


def base_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one (recorded in every output)."""
    from dreamcli.tasks.generate import random_seed

    return seed if seed is not None else random_seed()


def cpu_generator(seed: int):
    """Noise from a CPU generator: the same seed gives the same picture on any device."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


# Call arguments a user sets with a flag: a pipeline that has no such argument refuses a value the user
# changed from the request's default, instead of dropping it unsaid.
FLAGS = {"negative_prompt": "--negative", "guidance_rescale": "--guidance-rescale", "strength": "--strength"}


def fit_call(pipe, loaded, kwargs: dict) -> dict:
    """The arguments this pipeline's __call__ takes, plus what the model's family adds (PixArt's caption
    cleaning off, Kandinsky's prior steps, ...). An argument the pipeline lacks is left out, and refused when
    the user set it."""
    import inspect

    family = loaded.spec
    request = kwargs.pop("request", None)
    defaults = {f.name: f.default for f in dataclasses.fields(request)} if request is not None else {}
    kwargs = {**kwargs, **family.call_args(pipe, kwargs)}
    accepted = inspect.signature(pipe.__call__).parameters
    if "prompt_embeds" in accepted:  # A1111 weights, BREAK and long prompts (Kandinsky's prior has no such input)
        from dreamcli import embeddings
        from dreamcli.tasks.prompt_weights import embed_prompts

        if request is not None:
            embeddings.apply(pipe, family.prompt_encoding, request.model.embeddings, prompt_texts(kwargs),
                             request.model.allow_unsafe_pickle)
        kwargs = embed_prompts(pipe, family.prompt_encoding, kwargs)
    fitted = {}
    for key, value in kwargs.items():
        if key in accepted:
            fitted[key] = value
        elif key in FLAGS and getattr(request, key, None) != defaults.get(key):
            raise InputError(
                f"{FLAGS[key]} has no effect on {family.label} models ({type(pipe).__name__} takes no {key}): "
                f"leave it out"
            )
    return fitted


def prompt_texts(kwargs: dict) -> list[str]:
    """The prompts and negative prompts of a pipeline call, as a flat list."""
    out = []
    for key in ("prompt", "negative_prompt"):
        value = kwargs.get(key)
        out += [value] if isinstance(value, str) else list(value or [])
    return out


def latents_of(pipe, loaded, kwargs: dict):
    """Run a pipeline to its latents (the engine decodes them, so a half VAE that overflows is re-run in fp32)."""
    import warnings

    with warnings.catch_warnings(), loaded.spec.running(pipe):
        # Kandinsky's combined pipelines pass the deprecated `callback_steps` to their own parts.
        warnings.filterwarnings("ignore", "`callback_steps` is deprecated", FutureWarning)
        return pipe(output_type="latent", **kwargs).images


def check_multiple(loaded, width: int, height: int) -> None:
    """Refuse a size the model cannot draw exactly (a pipeline would silently round it) or at all (past SD3's
    position grid diffusers fails with a traceback)."""
    largest = loaded.spec.max_side(loaded.pipe)
    if largest and max(width, height) > largest:
        raise InputError(
            f"{width}x{height} is larger than {loaded.spec.label} models draw: use at most {largest} px a side"
        )
    step = loaded.spec.size_multiple(loaded.pipe)
    for name, value in (("width", width), ("height", height)):
        if value % step:
            lower = max(step, value - value % step)
            raise InputError(
                f"{name} {value} does not suit {loaded.spec.label} models, which draw in blocks of {step} px: "
                f"use {lower} or {lower + step}"
            )


def call_kwargs(request, prompt: str, seed: int, callback) -> dict:
    """The arguments every image-to-image diffusers call here shares (strength-based pipelines)."""
    return {
        "request": request,  # for fit_call: which settings the user changed
        "prompt": prompt,
        "negative_prompt": request.negative_prompt or None,
        "strength": request.strength,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "generator": cpu_generator(seed),
        "callback_on_step_end": callback,
    }


def draw_size(loaded, size: tuple[int, int]) -> tuple[int, int]:
    """The size `draw` runs the model at: whole blocks of the model's size multiple, nearest to `size`."""
    step = loaded.spec.size_multiple(loaded.pipe)
    return tuple(max(step, round(side / step) * step) for side in size)


def draw(pipe, loaded, **kwargs) -> Image.Image:
    """One diffusers call whose latents the engine decodes (a half-precision VAE that overflows is re-run
    in fp32, so no black pictures), returned at the asked width and height (the input's size by default).

    The model draws at the nearest size it can (Flux works in 16-pixel blocks, Kandinsky in 64s).
    """
    from dreamcli.engine import decode_latents
    from dreamcli.schedulers import check_steps

    check_steps(pipe.scheduler.config, kwargs["num_inference_steps"])  # a line, not diffusers' traceback
    asked = (kwargs.pop("width", None) or kwargs["image"].width, kwargs.pop("height", None) or kwargs["image"].height)
    width, height = draw_size(loaded, asked)
    check_multiple(loaded, width, height)  # past the model's largest side: one line, not diffusers' traceback
    if (width, height) != kwargs["image"].size:
        kwargs["image"] = kwargs["image"].resize((width, height), Image.Resampling.LANCZOS)
        for key in ("mask_image", "control_image"):
            if key in kwargs:
                kwargs[key] = kwargs[key].resize((width, height), Image.Resampling.NEAREST)
    counter = kwargs.pop("callback_on_step_end")
    kwargs.update(loaded.spec.progress(counter, kwargs["num_inference_steps"]))
    latents = latents_of(pipe, loaded, fit_call(pipe, loaded, {**kwargs, "width": width, "height": height}))
    image = decode_latents(loaded, pipe, latents, width, height)[0]
    return image if image.size == asked else image.resize(asked, Image.Resampling.LANCZOS)


def sub_seed(seed: int, part: int) -> int:
    """A distinct, reproducible seed for one pass or tile of an image (not seed + i: that is image i+1)."""
    return (seed * 1_000_003 + part * 7919 + 1) % (2**63 - 1)


class StepCounter:
    """Progress over all the model calls (passes, tiles) that make one image.

    The steps per call are the pipeline's own count of what it runs (`num_timesteps`: strength drops
    steps, PNDM adds warm-up ones), known once a call has started; `steps` serves pipelines without it.
    """

    def __init__(self, on_step: StepCallback | None, calls: int = 1, steps: int | None = None):
        self.on_step, self.calls, self.steps, self.done = on_step, calls, steps, 0
        self.steps_per_call: int | None = None  # set by a family whose pipeline counts only part of its steps

    def __call__(self, pipe, _step, _timestep, callback_kwargs):
        """diffusers' callback_on_step_end."""
        per_call = self.steps_per_call or getattr(pipe, "num_timesteps", None) or self.steps or 1
        total = max(1, self.calls * per_call)
        self.done = min(self.done + 1, total)
        if self.on_step is not None:
            self.on_step(self.done, total)
        return callback_kwargs


def make_image_record(task: str, request, loaded, pipe, seed: int, index: int, image, extra: dict | None = None):
    """The metadata that reproduces one output: its own request (seed, count 1), the model, versions.

    Same keys as `dream gen` records (so `dream info` and A1111 readers work), plus the task.
    """
    from dreamcli.engine import LoadedModel, fast_paths
    from dreamcli.tasks.generate import base_record

    own = replace(request, seed=seed, num_images=1)
    record = {"task": task, **base_record(own, loaded, pipe, seed, index, image), "pipeline": type(pipe).__name__}
    if isinstance(loaded, LoadedModel):  # not the x4 upscaler, which has its own pipeline
        record["fast_paths"] = fast_paths(loaded)
    record.update(extra or {})
    return record
