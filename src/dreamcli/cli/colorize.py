"""`dream colorize`: colour a grey or sepia picture, keeping its brightness."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import user_errors
from dreamcli.cli.image_common import (
    ImageArg,
    Strength,
    build_request,
    output_target,
    run_task,
    slug_text,
    task_settings,
)


@common.with_shared_flags
def colorize(
    image: ImageArg,
    prompt: Annotated[str, typer.Argument(help="What the picture shows, with colours if you know them.")] = "",
    color_prompt: Annotated[str | None, typer.Option(
        "--color-prompt", help="Words that ask for colour, after PROMPT (default: 'a colorful photo').")] = None,
    strength: Strength = None,
    width: Annotated[int | None, typer.Option(
        "-W", "--width", help="Width the model works at (default: the picture's shape at the model's size).")] = None,
    height: Annotated[int | None, typer.Option(
        "-H", "--height", help="Height the model works at (multiple of 8).")] = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Colour a grey or sepia IMAGE: colour from the model, brightness kept from the input."""
    from dreamcli.requests import ColorizeRequest
    from dreamcli.tasks.colorize import iter_colorize

    with user_errors():
        settings, used_preset = task_settings(flags)
        request = build_request(
            ColorizeRequest, settings, image=image, prompt=prompt, color_prompt=color_prompt, strength=strength,
            controlnet=settings.get("controlnet"), width=width, height=height,
        )
        target, fmt = output_target(settings)
        code = run_task(iter_colorize, request, target, fmt, used_preset, json_out, quiet,
                        slug_text(prompt, "colorize", image))
    if code:
        raise typer.Exit(code)
