"""`dream colorize`: colour a grey or sepia picture, keeping its brightness."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.image_common import (
    ImagesArg,
    PromptOption,
    Strength,
    WorkHeight,
    WorkWidth,
    run_image_command,
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

    run_image_command(
        "colorize", iter_colorize, read_inputs, ColorizeRequest, images, prompt, flags, json_out, quiet,
        dict(color_prompt=color_prompt, strength=strength, width=width, height=height),
        from_settings={"controlnet": "controlnet"},
    )
