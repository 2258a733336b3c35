"""What the image-to-image commands share: settings, the output-size flag, and the write loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import console, emit, hint, user_errors
from dreamcli.errors import DreamError, InputError
from dreamcli.requests import FORMATS, SETTING_TO_FIELD, model_options_from

MaxPixels = Annotated[int | None, typer.Option(
    "--max-pixels", help="Refuse outputs with more pixels than this (default: $DREAMCLI_MAX_PIXELS, else 4096x4096).",
    rich_help_panel="Output")]
Strength = Annotated[float | None, typer.Option(
    "--strength", help="How much the model may change: 0 keeps the input, 1 redraws from noise.")]
WorkWidth = Annotated[int | None, typer.Option(
    "-W", "--width", help="Width the model works at (default: the picture's shape at the model's size).")]
WorkHeight = Annotated[int | None, typer.Option("-H", "--height", help="Height the model works at (multiple of 8).")]
ImageArg = Annotated[str, typer.Argument(help="The picture to work on (PNG, JPEG, WebP, ...).")]
ImagesArg = Annotated[list[str], typer.Argument(
    metavar="IMAGE", show_default=False,
    help="The pictures to work on (PNG, JPEG, WebP, ...), then the prompt: the last word is the prompt when it "
    "is not a file and not a picture's name, or use --prompt.")]
PromptOption = Annotated[str | None, typer.Option(
    "--prompt", help="The prompt; with it, every positional argument is a picture.")]
# Names a user means as a picture even when the file is missing (a typo must not become the prompt).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".tga", ".mpo", ".heic")
JPEG_ALPHA_NOTE = "jpg has no transparency: the picture is laid on white (use --format png or webp to keep it)"
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
    if "control" in cls.__dataclass_fields__:  # gen, img2img and inpaint take ControlNets
        from dreamcli.requests import control_units_from

        kwargs["control"] = control_units_from(settings)
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


def images_and_prompt(args: list[str], prompt: str | None) -> tuple[list[str], str]:
    """Split `IMAGE... [PROMPT]` positionals into pictures and the prompt.

    With --prompt every positional is a picture. Otherwise, of two or more positionals the last is the
    prompt unless it is an existing path or ends like a picture's name (.png, .jpg, ...), so that
    `dream upscale *.png` takes every file and `dream img2img photo.png "a watercolour"` its prompt.
    """
    if prompt is not None:
        return list(args), prompt
    if len(args) >= 2:
        last = args[-1]
        if not (Path(last).expanduser().exists() or last.lower().endswith(PICTURE_SUFFIXES)):
            return list(args[:-1]), last
    return list(args), ""


def check_all_inputs(check, requests: list) -> None:
    """Read every picture (and mask) before the model loads, so a bad one stops the run before anything is
    written; with several pictures an error that does not name its picture is prefixed with it."""
    for request in requests:
        try:
            check(request)
        except DreamError as e:
            where = str(request.image)
            if where not in str(e):
                e.args = (f"image {where}: {e}",)
            raise


def stop(progress) -> None:
    """Stop a progress display only if it ever started (rich prints an empty line otherwise)."""
    if progress.live.is_started:
        progress.stop()


def run_image_command(task: str, iterate, check, request_class, images: list[str], prompt: str | None, flags: dict,
                      json_out: bool, quiet: bool, fields: dict, task_model_key: str | None = None,
                      from_settings: dict | None = None) -> None:
    """What every image command does with its arguments: one request per picture (the command's own `fields`,
    plus request fields taken from the merged settings, e.g. a preset's `controlnet`), then run_tasks; exits
    with its code."""
    with user_errors():
        pictures, text = images_and_prompt(images, prompt)
        settings, used_preset = task_settings(flags, task_model_key)
        extra = {field: settings.get(key) for field, key in (from_settings or {}).items()}
        requests = [build_request(request_class, settings, image=image, prompt=text, **fields, **extra)
                    for image in pictures]
        target, fmt = output_target(settings)
        slugs = [slug_text(text, task, image, len(pictures) > 1) for image in pictures]
        code = run_tasks(iterate, requests, target, fmt, used_preset, json_out, quiet, slugs, check=check)
    if code:
        raise typer.Exit(code)


def run_tasks(iterate, requests: list, outdir: Path, fmt: str, preset: str | None, as_json: bool, quiet: bool,
              slugs: list[str], check=None) -> int:
    """Run one task on several pictures (one request each) in one progress display; returns the exit code.

    `check(request)` reads a request's inputs without the model: with several pictures every one is checked
    first, so a missing or damaged picture stops the run before any output is written. The model loads once
    (the engine keeps it per process); each output is written as soon as it exists.
    """
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dreamcli.io.images import to_rgb
    from dreamcli.run import write

    written, shown = 0, set()
    started = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=quiet,
    )
    total = sum(request.num_images for request in requests)
    images = progress.add_task("images", total=total, visible=total > 1)
    steps = progress.add_task("steps", total=None)

    def on_step(done: int, of: int) -> None:
        # Started at the first step, so errors raised while loading leave no empty progress line.
        if not progress.live.is_started:
            progress.start()
        progress.update(steps, completed=done, total=of)

    try:
        if check is not None and len(requests) > 1:
            check_all_inputs(check, requests)
        if preset == "demo" and requests[0].model.model.startswith("package:") and requests[0].uses_model():
            hint(DEMO_HINT, quiet)
        for request, slug in zip(requests, slugs, strict=True):
            for result in iterate(request, on_step):
                image, notes = result.image, list(result.notes)
                if fmt == "jpg" and image.mode == "RGBA":
                    notes.append(JPEG_ALPHA_NOTE)
                    image = to_rgb(image)
                for note in notes:
                    if note not in shown:
                        shown.add(note)
                        console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
                path = write(replace(result, image=image), outdir, fmt, slug)
                written += 1
                progress.advance(images)
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


def slug_text(prompt: str, task: str, image: str, several: bool = False) -> str:
    """What the output name's slug is made from: the prompt, else the task and input name; with several
    pictures the input's name comes first, so each output says which picture it came from."""
    if several and prompt.strip():
        return f"{Path(image).stem} {prompt.strip()}"
    return prompt.strip() or f"{task} {Path(image).stem}"


__all__ = ["MaxPixels", "Strength", "WorkWidth", "WorkHeight", "ImageArg", "ImagesArg", "PromptOption",
           "task_settings", "build_request", "output_target", "run_tasks", "run_image_command", "images_and_prompt",
           "slug_text"]
