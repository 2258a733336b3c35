"""`dream inpaint`: repaint the masked part of a picture."""

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
@common.with_control_flags
def inpaint(
    images: ImagesArg,
    prompt: PromptOption = None,
    mask: Annotated[str | None, typer.Option(
        "--mask", help="White (or opaque) marks the area to repaint; any image mode.")] = None,
    mask_blur: Annotated[float | None, typer.Option(
        "--mask-blur", help="Feather the mask's edge by this many pixels (default 4).")] = None,
    invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Repaint the black area instead.")] = False,
    strength: Strength = None,
    width: WorkWidth = None,
    height: WorkHeight = None,
    flags: dict | None = None,  # the shared and ControlNet flags: see common.with_*_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Repaint the masked area of each IMAGE from PROMPT (one --mask for all); the rest is kept exactly."""
    from dreamcli.requests import InpaintRequest
    from dreamcli.tasks.inpaint import iter_inpaint, read_inputs

    run_image_command(
        "inpaint", iter_inpaint, read_inputs, InpaintRequest, images, prompt,
        flags, json_out, quiet,
        dict(mask=mask or "", mask_blur=mask_blur, invert_mask=invert_mask, strength=strength, width=width,
             height=height),
        task_model_key="inpaint_model",
    )
