"""`dream restore`: remove JPEG artefacts, keeping what the file says."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.image_common import (
    ImagesArg,
    PromptOption,
    run_image_command,
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

    run_image_command(
        "restore", iter_restore, read_inputs, RestoreRequest, images, prompt, flags, json_out, quiet,
        dict(strength=strength),
        from_settings={"controlnet": "tile_controlnet"},
    )
