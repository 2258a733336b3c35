"""The run loop under both doors (cli/ and server/): load the model once, make each image, write it with its record."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# Kept free of torch / diffusers imports at module level: `dream gen --server` writes files through write()
# without ever loading a model, and must start as fast as `dream --help`.

StepCallback = Callable[[int, int], None]


def load(requests: list) -> tuple[object, list[str]]:
    """Load the first request's model (the engine's cache serves the rest): (LoadedModel, notes for people).

    The notes say why memory options were chosen, and what was loaded where in how long.
    """
    from dreamcli.engine import load_model

    started = time.perf_counter()
    loaded = load_model(requests[0].model)
    notes = [loaded.memory_reason] if loaded.memory_reason else []
    notes.append(f"model {loaded.source.name} ({loaded.spec.label}) on {loaded.device}, {loaded.dtype}, "
                 f"loaded in {time.perf_counter() - started:.1f} s")
    return loaded, notes


def write(result, outdir: str | Path, fmt: str, slug: str | None = None, counter: int | None = None) -> Path:
    """Write one result (a GenResult or ImageResult) atomically, with its record, under the usual name.

    The folder is created only now, when there is something to write. `slug` is what the name's slug is made
    from (default: the record's prompt); `counter` fixes the name's counter (a job's place in a sharded run).
    """
    from dreamcli.io.metadata import save_options
    from dreamcli.io.outputs import ensure_outdir, save_atomic

    folder = ensure_outdir(outdir)
    text = result.record["request"]["prompt"] if slug is None else slug
    return save_atomic(result.image, folder, result.seed, text, fmt, counter=counter,
                       **save_options(result.record, fmt))


def generate_written(requests: Iterable, outdir: str | Path | None, fmt: str = "png", batch_size: int = 1,
                     on_step: StepCallback | None = None) -> Iterator[tuple[object, Path | None]]:
    """Make every image of text-to-image requests in order, writing each as soon as it exists.

    Yields (GenResult, path); path is None when `outdir` is None (the caller keeps the image in memory,
    as the server does when it saves nothing).
    """
    from dreamcli.tasks import iter_generate_many

    for result in iter_generate_many(requests, on_step, batch_size):
        yield result, (write(result, outdir, fmt) if outdir is not None else None)


def task_written(iterate, request, outdir: str | Path | None, fmt: str = "png", slug: str | None = None,
                 on_step: StepCallback | None = None) -> Iterator[tuple[object, Path | None]]:
    """The same for one image-to-image request: `iterate` is the task's iter_* function (iter_img2img, ...)."""
    for result in iterate(request, on_step):
        yield result, (write(result, outdir, fmt, slug) if outdir is not None else None)
