"""`dream outpaint`: extend a picture beyond its borders."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import user_errors
from dreamcli.cli.image_common import (
    ImagesArg,
    MaxPixels,
    PromptOption,
    Strength,
    build_request,
    images_and_prompt,
    output_target,
    run_tasks,
    slug_text,
    task_settings,
)


def _margin(name: str, what: str):
    return Annotated[int | None, typer.Option(f"--{name}", help=f"Pixels to add {what} (rounded up to 8).")]


@common.with_shared_flags
def outpaint(
    images: ImagesArg,
    prompt: PromptOption = None,
    left: _margin("left", "on the left") = None,
    right: _margin("right", "on the right") = None,
    top: _margin("top", "at the top") = None,
    bottom: _margin("bottom", "at the bottom") = None,
    all_sides: Annotated[int | None, typer.Option(
        "--all", help="Pixels to add on every side (a side's own flag wins).")] = None,
    strength: Strength = None,
    max_pixels: MaxPixels = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Extend each IMAGE by the given margins; the original pixels are kept exactly."""
    from dreamcli.requests import OutpaintRequest
    from dreamcli.tasks.outpaint import iter_outpaint, read_inputs

    sides = {name: value if value is not None else (all_sides or 0)
             for name, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom))}
    with user_errors():
        pictures, text = images_and_prompt(images, prompt)
        settings, used_preset = task_settings(flags, "inpaint_model")
        requests = [build_request(
            OutpaintRequest, settings, image=image, prompt=text, strength=strength, max_pixels=max_pixels, **sides,
        ) for image in pictures]
        target, fmt = output_target(settings)
        slugs = [slug_text(text, "outpaint", image, len(pictures) > 1) for image in pictures]
        code = run_tasks(iter_outpaint, requests, target, fmt, used_preset, json_out, quiet, slugs, check=read_inputs)
    if code:
        raise typer.Exit(code)
