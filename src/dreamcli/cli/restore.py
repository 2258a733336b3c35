"""`dream restore`: remove JPEG artefacts, keeping what the file says."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import user_errors
from dreamcli.cli.image_common import (
    ImagesArg,
    PromptOption,
    build_request,
    images_and_prompt,
    output_target,
    run_tasks,
    slug_text,
    task_settings,
)

RestoreStrength = Annotated[float | None, typer.Option(
    "--strength", help="How much the model may change before the JPEG's own data is put back (default 0.05: one "
    "denoising step near the clean end; more invents more, which the projection then trims).")]


@common.with_shared_flags
def restore(
    images: ImagesArg,
    prompt: PromptOption = None,
    strength: RestoreStrength = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Remove JPEG artefacts from each IMAGE: the model proposes, the file's own DCT coefficients decide."""
    from dreamcli.requests import RestoreRequest
    from dreamcli.tasks.restore import iter_restore, read_inputs

    with user_errors():
        pictures, text = images_and_prompt(images, prompt)
        settings, used_preset = task_settings(flags)
        requests = [build_request(
            RestoreRequest, settings, image=image, prompt=text, strength=strength,
            controlnet=settings.get("tile_controlnet"),
        ) for image in pictures]
        target, fmt = output_target(settings)
        slugs = [slug_text(text, "restore", image, len(pictures) > 1) for image in pictures]
        code = run_tasks(iter_restore, requests, target, fmt, used_preset, json_out, quiet, slugs, check=read_inputs)
    if code:
        raise typer.Exit(code)
