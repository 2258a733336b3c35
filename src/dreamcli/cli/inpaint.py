"""`dream inpaint`: repaint the masked part of a picture."""

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
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Repaint the masked area of each IMAGE from PROMPT (one --mask for all); the rest is kept exactly."""
    from dreamcli.requests import InpaintRequest
    from dreamcli.tasks.inpaint import iter_inpaint, read_inputs

    with user_errors():
        pictures, text = images_and_prompt(images, prompt)
        settings, used_preset = task_settings(flags, "inpaint_model")
        requests = [build_request(
            InpaintRequest, settings, image=image, mask=mask or "", prompt=text, mask_blur=mask_blur,
            invert_mask=invert_mask, strength=strength, width=width, height=height,
        ) for image in pictures]
        target, fmt = output_target(settings)
        slugs = [slug_text(text, "inpaint", image, len(pictures) > 1) for image in pictures]
        code = run_tasks(iter_inpaint, requests, target, fmt, used_preset, json_out, quiet, slugs, check=read_inputs)
    if code:
        raise typer.Exit(code)
