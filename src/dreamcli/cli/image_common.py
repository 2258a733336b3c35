"""What the image-to-image commands share: settings, the output-size flag, and the write loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import console, emit, hint
from dreamcli.errors import InputError
from dreamcli.requests import FORMATS, SETTING_TO_FIELD, model_options_from

MaxPixels = Annotated[int | None, typer.Option(
    "--max-pixels", help="Refuse outputs with more pixels than this (default: $DREAMCLI_MAX_PIXELS, else 4096x4096).",
    rich_help_panel="Output")]
Strength = Annotated[float | None, typer.Option(
    "--strength", help="How much the model may change: 0 keeps the input, 1 redraws from noise.")]
ImageArg = Annotated[str, typer.Argument(help="The picture to work on (PNG, JPEG, WebP, ...).")]
DEMO_HINT = (
    "using the built-in demo model (coloured shapes only); for real pictures name a checkpoint "
    "with -m model.safetensors (or --preset sd15 / sdxl)"
)


def task_settings(flags: dict, task_model_key: str | None = None) -> tuple[dict, str | None]:
    """Merge flags, preset, user config and defaults; a preset's task model (e.g. `inpaint_model`)
    replaces its base model unless the command line names a model itself."""
    from dreamcli.config import merge_settings, preset_names

    settings, preset = merge_settings(flags)
    named = flags.get("model")
    named_a_model = named is not None and (Path(named).expanduser().exists() or named not in preset_names())
    if task_model_key and settings.get(task_model_key) and not named_a_model:
        settings["model"] = settings[task_model_key]
    return settings, preset


def request_fields(settings: dict, cls) -> dict:
    """The shared request fields (prompt, steps, guidance, ...) the merged settings give a value for.

    Width and height are left out: in a preset they are the model's size, not a working size.
    """
    names = {f for f in cls.__dataclass_fields__}
    return {
        field_name: settings[key]
        for key, field_name in SETTING_TO_FIELD.items()
        if field_name in names and key not in ("width", "height", "prompt") and settings.get(key) is not None
    }


def build_request(cls, settings: dict, **fields):
    """A validated request from merged settings plus this command's own fields (None: the default)."""
    kwargs = request_fields(settings, cls)
    kwargs.update({k: v for k, v in fields.items() if v is not None})
    return cls(model=model_options_from(settings), **kwargs)


def output_target(settings: dict) -> tuple[Path, str]:
    """(folder, format) checked before any work."""
    from dreamcli.io.outputs import check_outdir

    fmt = str(settings["format"]).lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {settings['format']!r}: use png, jpg or webp")
    outdir = Path(str(settings["outdir"])).expanduser()
    check_outdir(outdir)
    return outdir, fmt


def json_line(path: Path, record: dict) -> dict:
    """What --json prints for one output: where it is and what made it."""
    req = record["request"]
    line = {
        "path": str(path), "task": record["task"], "seed": record["seed"], "prompt": req["prompt"],
        "negative_prompt": req["negative_prompt"], "image": req["image"], "model": record["model"],
        "model_hash": record["model_hash"], "width": record["width"], "height": record["height"],
        "steps": req["num_inference_steps"], "guidance": req["guidance_scale"], "strength": req["strength"],
        "scheduler": record["scheduler"], "index": record["index"],
    }
    return line


def stop(progress) -> None:
    """Stop a progress display only if it ever started (rich prints an empty line otherwise)."""
    if progress.live.is_started:
        progress.stop()


def run_task(iterate, request, outdir: Path, fmt: str, preset: str | None, as_json: bool, quiet: bool,
             slug: str) -> int:
    """Run one task, writing each picture as soon as it exists; returns the exit code."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dreamcli.io.metadata import save_options
    from dreamcli.io.outputs import ensure_outdir, save_atomic

    if preset == "demo" and request.model.model.startswith("package:"):
        hint(DEMO_HINT, quiet)
    written, shown = 0, set()
    started = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=quiet,
    )
    steps = progress.add_task("steps", total=None)

    def on_step(done: int, of: int) -> None:
        # Started at the first step, so errors raised while loading leave no empty progress line.
        if not progress.live.is_started:
            progress.start()
        progress.update(steps, completed=done, total=of)

    try:
        for result in iterate(request, on_step):
            for note in result.notes:
                if note not in shown:
                    shown.add(note)
                    console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
            outdir_ready = ensure_outdir(outdir)
            path = save_atomic(result.image, outdir_ready, result.seed, slug, fmt, **save_options(result.record, fmt))
            written += 1
            progress.reset(steps)
            emit(json.dumps(json_line(path, result.record)) if as_json else str(path))
    except KeyboardInterrupt:
        stop(progress)
        hint(f"interrupted: kept {written} finished image(s) in {outdir}")
        return common.INTERRUPTED
    finally:
        stop(progress)
    elapsed = time.perf_counter() - started
    hint(f"{written} image(s) in {elapsed:.1f} s", quiet)
    return 0


def slug_text(prompt: str, task: str, image: str) -> str:
    """What the output name's slug is made from: the prompt, else the task and input name."""
    return prompt.strip() or f"{task} {Path(image).stem}"


__all__ = ["MaxPixels", "Strength", "ImageArg", "task_settings", "build_request",
           "output_target", "run_task", "slug_text"]
