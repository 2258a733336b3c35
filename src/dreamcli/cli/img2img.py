"""`dream img2img`: redraw pictures from a prompt (A1111's img2img tab)."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.image_common import (
    ImagesArg,
    PromptOption,
    WorkHeight,
    WorkWidth,
    run_image_command,
)

Img2ImgStrength = Annotated[float | None, typer.Option(
    "--strength", help="How much the model may change (default 0.75): near 0 keeps the picture, 1 redraws it from "
    "noise; it runs steps x strength denoising steps.")]


@common.with_shared_flags
@common.with_control_flags
def img2img(
    images: ImagesArg,
    prompt: PromptOption = None,
    strength: Img2ImgStrength = None,
    width: WorkWidth = None,  # img2img's output is the size it works at
    height: WorkHeight = None,
    flags: dict | None = None,  # the shared and ControlNet flags: see common.with_*_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Redraw each IMAGE from PROMPT; --strength says how far from the picture the model may go."""
    from dreamcli.requests import Img2ImgRequest
    from dreamcli.tasks.img2img import iter_img2img, read_inputs

    run_image_command(
        "img2img", iter_img2img, read_inputs, Img2ImgRequest, images, prompt,
        flags, json_out, quiet,
        dict(strength=strength, width=width, height=height),
    )
