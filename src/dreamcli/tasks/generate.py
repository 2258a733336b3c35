"""Text to image: generate() and its streaming form iter_generate()."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from dreamcli.requests import GenRequest

StepCallback = Callable[[int, int], None]  # (steps done, total steps) for the current image


@dataclass
class GenResult:
    """One generated image and the record that reproduces it (stored in the file's metadata)."""

    image: object  # PIL.Image.Image
    seed: int
    index: int
    record: dict


def random_seed() -> int:
    """A fresh base seed, small enough for every tool that reads A1111 metadata (32 bits)."""
    return random.SystemRandom().randrange(2**32)


def versions() -> dict:
    """Versions of the pieces that decide the pixels."""
    import diffusers
    import torch
    import transformers

    import dreamcli

    return {
        "dreamcli": dreamcli.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def make_record(request: GenRequest, loaded, pipe, seed: int, index: int, image) -> dict:
    """The metadata that reproduces one image: its own request (seed and count 1) and the model."""
    own = replace(request, seed=seed, num_images=1, width=image.width, height=image.height)
    return base_record(own, loaded, pipe, seed, index, image)


def base_record(request, loaded, pipe, seed: int, index: int, image) -> dict:
    """Keys every dreamcli image record has (what `dream info` and the A1111 text read), for any task.

    `request` is the image's own request: its seed, and a count of one.
    """
    from dreamcli.schedulers import a1111_sampler_name

    return {
        "request": request.to_dict(),
        "seed": seed,
        "index": index,
        "width": image.width,
        "height": image.height,
        "model": request.model.model,
        "model_name": loaded.source.name,
        "model_path": loaded.source.location,
        "model_hash": loaded.model_hash(),
        "family": loaded.family,
        "scheduler": request.model.scheduler or pipe.scheduler.__class__.__name__,
        "sampler": a1111_sampler_name(request.model.scheduler, pipe.scheduler.__class__.__name__),
        "device": loaded.device,
        "dtype": loaded.dtype,
        "versions": versions(),
    }


def iter_generate(request: GenRequest, on_step: StepCallback | None = None) -> Iterator[GenResult]:
    """Yield images one by one, so a caller can save each before the next starts (Ctrl-C keeps them).

    Image i uses seed `request.seed + i`, with noise drawn from a CPU generator: the same seed gives
    the same picture on any device, and one image of a batch can be re-made alone.
    """
    import torch

    from dreamcli.engine import pipeline_for

    pipe, loaded = pipeline_for("text2img", request.model)
    base_seed = request.seed if request.seed is not None else random_seed()
    steps = request.num_inference_steps

    def step_end(_pipe, step, _timestep, callback_kwargs):
        if on_step is not None:
            on_step(step + 1, steps)
        return callback_kwargs

    # The SD pipeline drops a lone width or height back to the default, so fill the other here.
    native = pipe.unet.config.sample_size
    native_h, native_w = native if isinstance(native, (list, tuple)) else (native, native)
    width = request.width or native_w * pipe.vae_scale_factor
    height = request.height or native_h * pipe.vae_scale_factor

    for index in range(request.num_images):
        seed = base_seed + index
        image = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=steps,
            guidance_scale=request.guidance_scale,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=step_end,
        ).images[0]
        yield GenResult(image, seed, index, make_record(request, loaded, pipe, seed, index, image))


def generate(request: GenRequest, on_step: StepCallback | None = None) -> list[GenResult]:
    """Generate `request.num_images` images from a prompt; see iter_generate."""
    return list(iter_generate(request, on_step))
