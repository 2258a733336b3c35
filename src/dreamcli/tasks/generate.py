"""Text to image: generate(), its streaming form iter_generate(), and batched iter_generate_many()."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from dreamcli.errors import InputError
from dreamcli.requests import GenRequest

StepCallback = Callable[[int, int], None]  # (steps done, total steps) for the current image


@dataclass
class GenResult:
    """One generated image and the record that reproduces it (stored in the file's metadata)."""

    image: object  # PIL.Image.Image
    seed: int
    index: int
    record: dict
    notes: list[str] = field(default_factory=list)  # for the user, e.g. which hires upscaler ran instead


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


def make_record(request: GenRequest, loaded, pipe, seed: int, index: int, image, batch: int = 1,
                first_pass: tuple[int, int] | None = None, hires_upscaler: str | None = None) -> dict:
    """The metadata that reproduces one image: its own request (seed and count 1), the model, and the
    fast paths it was made with (a batch or a fused attention changes pixels by rounding only).

    A hires image records its first pass's size as the request's (as A1111's Size does), the hires steps it
    ran and the upscaler that ran, so that the record alone re-makes it whatever a preset or config says.
    """
    from dreamcli.engine import fast_paths

    if request.hires_scale:
        from dreamcli.tasks.hires import hires_steps

        own = replace(request, seed=seed, num_images=1, width=first_pass[0], height=first_pass[1],
                      hires_upscaler=hires_upscaler or request.hires_upscaler, hires_steps=hires_steps(request))
    else:
        own = replace(request, seed=seed, num_images=1, width=image.width, height=image.height)
    record = base_record(own, loaded, pipe, seed, index, image)
    record["fast_paths"] = {**fast_paths(loaded), "batch": batch}
    return record


def base_record(request, loaded, pipe, seed: int, index: int, image) -> dict:
    """Keys every dreamcli image record has (what `dream info` and the A1111 text read), for any task.

    `request` is the image's own request: its seed, and a count of one.
    """
    from dreamcli import embeddings
    from dreamcli.schedulers import a1111_sampler_name

    record = {
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
        "guidance": loaded.spec.guidance(loaded.pipe) if hasattr(loaded, "spec") else "cfg",
        "scheduler": request.model.scheduler or pipe.scheduler.__class__.__name__,
        "sampler": a1111_sampler_name(request.model.scheduler, pipe.scheduler.__class__.__name__),
        "device": loaded.device,
        "dtype": loaded.dtype,
        "versions": versions(),
    }
    if hasattr(loaded, "spec") and loaded.spec.prompt_encoding != "text":
        used = embeddings.record(request.model.embeddings, [request.prompt, request.negative_prompt])
        if used:
            record["embeddings"] = used  # word -> short hash (A1111's TI hashes)
    return record


@dataclass(frozen=True)
class ImageJob:
    """One image to make: its request, its index in that request, and its own seed (base seed + index)."""

    request: GenRequest
    index: int
    seed: int


def image_jobs(requests: Iterable[GenRequest]) -> list[ImageJob]:
    """Every image the requests ask for, in order; a request without a seed draws its base seed here."""
    return list(_iter_jobs(requests))


def _iter_jobs(requests: Iterable[GenRequest]) -> Iterator[ImageJob]:
    # Lazily: `-n 100000` plans one job at a time instead of holding them all.
    for request in requests:
        base = request.seed if request.seed is not None else random_seed()
        for index in range(request.num_images):
            yield ImageJob(request, index, base + index)


def check_requests(requests: Iterable[GenRequest], batch_size: int, images: int, sizes: dict) -> None:
    """What only the loaded model can tell, checked for every request before any image is drawn: the steps
    its scheduler can take, and its size (the model's native one where unset) within the pixel limit, for
    one image and for a batch of them.
    """
    from dreamcli.engine import load_model, make_scheduler, pipeline_for
    from dreamcli.limits import check_pixels
    from dreamcli.requests import check_batch_pixels
    from dreamcli.schedulers import check_steps
    from dreamcli.tasks.image_common import check_multiple, fit_call

    batch = max(1, min(batch_size, images))
    seen = set()
    for request in requests:
        key = (request.model, request.width, request.height, request.num_inference_steps, request.hires_scale,
               request.hires_steps, request.hires_strength, request.control)
        if key in seen:
            continue
        seen.add(key)
        scheduler = make_scheduler(load_model(request.model), request.model.scheduler)
        check_steps(scheduler.config, request.num_inference_steps)
        width, height = _size(request, sizes)
        check_pixels(width, height, "the image")
        pipe, loaded = pipeline_for("text2img", request.model)
        check_multiple(loaded, width, height)
        fit_call(pipe, loaded, _call_kwargs(request, width, height))  # refuses a flag this model ignores
        if request.control:
            from dreamcli.tasks.control import check_controls, control_pipeline

            check_controls(request.control)
            control_pipeline("text2img", request)  # refuses a family without ControlNets, loads each one
        if batch > 1:
            check_batch_pixels(batch, width, height, "one batch", "lower --batch-size")
        if request.hires_scale:
            from dreamcli.tasks.hires import check_hires

            check_hires(request, width, height)


def iter_generate(request: GenRequest, on_step: StepCallback | None = None, batch_size: int = 1) -> Iterator[GenResult]:
    """Yield images one by one, so a caller can save each before the next starts (Ctrl-C keeps them).

    Image i uses seed `request.seed + i`, with noise drawn from a CPU generator: the same seed gives
    the same picture on any device, and one image of a batch can be re-made alone. Up to
    `batch_size` images share one pipeline call (one UNet batch); each keeps its own generator.
    """
    return iter_generate_many([request], on_step, batch_size)


def iter_generate_many(
    requests: Iterable[GenRequest], on_step: StepCallback | None = None, batch_size: int = 1
) -> Iterator[GenResult]:
    """Yield the images of several requests in order, packing consecutive ones into UNet batches.

    Images batch together when one pipeline call can make them all: same model options, size, steps,
    guidance and negative prompt (the prompts may differ). Each image equals the one made alone up
    to float rounding.
    """
    requests = list(requests)
    images = sum(request.num_images for request in requests)
    return _generate(requests, _iter_jobs(requests), images, on_step, batch_size)


def iter_generate_jobs(
    jobs: Iterable[ImageJob], on_step: StepCallback | None = None, batch_size: int = 1
) -> Iterator[GenResult]:
    """Make the given images (e.g. one process's share of a prompt file), batched as iter_generate_many says."""
    jobs = list(jobs)
    return _generate([job.request for job in jobs], jobs, len(jobs), on_step, batch_size)


def _generate(requests: list[GenRequest], jobs: Iterable[ImageJob], images: int, on_step: StepCallback | None,
              batch_size: int) -> Iterator[GenResult]:
    from dreamcli.engine import decode_latents, pipeline_for
    from dreamcli.tasks.hires import TwoPassProgress, hires_fix, upscaler_for
    from dreamcli.tasks.image_common import StepCounter, cpu_generator, fit_call, latents_of

    if batch_size < 1:
        raise InputError(f"batch-size {batch_size} is too small: use 1 or more")
    sizes = {}
    check_requests(requests, batch_size, images, sizes)  # a bad prompt-file line stops the run before its first image
    for batch in _batches(jobs, batch_size, sizes):
        first = batch[0].request
        pipe, loaded = pipeline_for("text2img", first.model)
        width, height = sizes[first.model, first.width, first.height]
        control, control_record = {}, None  # a batch shares its control units (_batches keys on them)
        if first.control:
            from dreamcli.tasks.control import steer

            pipe, loaded, control, control_record = steer("text2img", first, (width, height))
        hires = next((job.request for job in batch if job.request.hires_scale), None)
        # With a hires pass to come, the steps shown cover both passes.
        progress = TwoPassProgress(on_step, hires) if hires else None
        counter = StepCounter(progress.first_pass if progress else on_step)
        kwargs = _call_kwargs(first, width, height, len(batch))
        kwargs.update(
            prompt=[job.request.prompt for job in batch],
            generator=[cpu_generator(job.seed) for job in batch],
            **loaded.spec.progress(counter, first.num_inference_steps),
            **control,
        )
        latents = latents_of(pipe, loaded, fit_call(pipe, loaded, kwargs))
        # The latent upscaler starts from the latents: the first pass's pictures are decoded only when needed.
        needs_pictures = any(not job.request.hires_scale or upscaler_for(job.request, loaded)[0] != "latent"
                             for job in batch)
        images = decode_latents(loaded, pipe, latents, width, height) if needs_pictures else [None] * len(batch)
        for i, (job, image) in enumerate(zip(batch, images, strict=True)):
            request, notes, upscaler = job.request, [], None
            if request.hires_scale:
                counter = StepCounter(progress.second_pass)
                second = hires_fix(request, pipe, latents[i : i + 1], image, (width, height), job.seed, counter)
                image, upscaler, notes = second.image, second.upscaler, [second.note] if second.note else []
            record = make_record(request, loaded, pipe, job.seed, job.index, image, batch=len(batch),
                                 first_pass=(width, height), hires_upscaler=upscaler)
            if control_record is not None:
                record["control"] = control_record
            yield GenResult(image, job.seed, job.index, record, notes)


def _call_kwargs(request: GenRequest, width: int, height: int, count: int = 1) -> dict:
    """The pipeline arguments a request sets (before fit_call keeps what the model's pipeline takes)."""
    return {
        "request": request,  # for fit_call: which settings the user changed
        # None, not "": SDXL uses zero embeddings for an empty negative prompt, as it was trained.
        "negative_prompt": [request.negative_prompt] * count if request.negative_prompt else None,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "guidance_rescale": request.guidance_rescale,
        "width": width,
        "height": height,
    }


def _batches(jobs: Iterable[ImageJob], batch_size: int, sizes: dict) -> Iterator[list[ImageJob]]:
    # Only consecutive jobs are packed, so results come out in the order they were asked for.
    batch, key = [], None
    for job in jobs:
        request = job.request
        job_key = (request.model, _size(request, sizes), request.num_inference_steps, request.guidance_scale,
                   request.guidance_rescale, request.negative_prompt, request.control)
        if batch and job_key != key:
            yield batch
            batch = []
        batch.append(job)
        key = job_key
        if len(batch) == batch_size:  # full: go now rather than after looking at the next job
            yield batch
            batch = []
    if batch:
        yield batch


def _size(request: GenRequest, sizes: dict) -> tuple[int, int]:
    """(width, height) the request is drawn at; an unset side is the model's native one.

    The SD pipeline drops a lone width or height back to its default, so the other is filled here.
    """
    key = (request.model, request.width, request.height)
    if key not in sizes:
        from dreamcli.engine import load_model
        from dreamcli.tasks.image_common import native_size

        native = native_size(load_model(request.model))
        sizes[key] = (request.width or native, request.height or native)
    return sizes[key]


def generate(request: GenRequest, on_step: StepCallback | None = None, batch_size: int = 1) -> list[GenResult]:
    """Generate `request.num_images` images from a prompt; see iter_generate."""
    return list(iter_generate(request, on_step, batch_size))
