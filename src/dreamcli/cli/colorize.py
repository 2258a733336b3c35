"""`dream colorize`: colour a grey or sepia picture, keeping its brightness."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import user_errors
from dreamcli.cli.image_common import (
    ImagesArg,
    PromptOption,
    Strength,
    WorkHeight,
    WorkWidth,
    build_request,
    images_and_prompt,
    output_target,
    run_tasks,
    slug_text,
    task_settings,
)


@common.with_shared_flags
def colorize(
    images: ImagesArg,
    prompt: PromptOption = None,
    color_prompt: Annotated[str | None, typer.Option(
        "--color-prompt", help="Words that ask for colour, after PROMPT (default: 'a colorful photo').")] = None,
    strength: Strength = None,
    width: WorkWidth = None,
    height: WorkHeight = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Colour grey or sepia pictures: colour from the model, brightness kept from each input."""
    from dreamcli.requests import ColorizeRequest
    from dreamcli.tasks.colorize import iter_colorize, read_inputs

    with user_errors():
        pictures, text = images_and_prompt(images, prompt)
        settings, used_preset = task_settings(flags)
        requests = [build_request(
            ColorizeRequest, settings, image=image, prompt=text, color_prompt=color_prompt, strength=strength,
            controlnet=settings.get("controlnet"), width=width, height=height,
        ) for image in pictures]
        target, fmt = output_target(settings)
        slugs = [slug_text(text, "colorize", image, len(pictures) > 1) for image in pictures]
        code = run_tasks(iter_colorize, requests, target, fmt, used_preset, json_out, quiet, slugs, check=read_inputs)
    if code:
        raise typer.Exit(code)
