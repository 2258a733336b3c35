"""`dream inpaint`: repaint the masked part of a picture."""

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
def inpaint(
    image: ImageArg,
    prompt: Annotated[str, typer.Argument(help="What to paint in the masked area.")] = "",
    mask: Annotated[str | None, typer.Option(
        "--mask", help="White (or opaque) marks the area to repaint; any image mode.")] = None,
    mask_blur: Annotated[float | None, typer.Option(
        "--mask-blur", help="Feather the mask's edge by this many pixels (default 4).")] = None,
    invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Repaint the black area instead.")] = False,
    strength: Strength = None,
    width: Annotated[int | None, typer.Option(
        "-W", "--width", help="Width the model works at (default: the picture's shape at the model's size).")] = None,
    height: Annotated[int | None, typer.Option(
        "-H", "--height", help="Height the model works at (multiple of 8).")] = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Repaint the masked area of IMAGE from PROMPT; everything outside the mask is kept exactly."""
    from dreamcli.requests import InpaintRequest
    from dreamcli.tasks.inpaint import iter_inpaint

    with user_errors():
        settings, used_preset = task_settings(flags, "inpaint_model")
        request = build_request(
            InpaintRequest, settings, image=image, mask=mask or "", prompt=prompt, mask_blur=mask_blur,
            invert_mask=invert_mask, strength=strength, width=width, height=height,
        )
        target, fmt = output_target(settings)
        code = run_task(iter_inpaint, request, target, fmt, used_preset, json_out, quiet,
                        slug_text(prompt, "inpaint", image))
    if code:
        raise typer.Exit(code)
