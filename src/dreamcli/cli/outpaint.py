"""`dream outpaint`: extend a picture beyond its borders."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.image_common import (
    ImagesArg,
    MaxPixels,
    PromptOption,
    Strength,
    run_image_command,
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
    run_image_command(
        "outpaint", iter_outpaint, read_inputs, OutpaintRequest, images, prompt, flags, json_out, quiet,
        dict(strength=strength, max_pixels=max_pixels, **sides),
        task_model_key="inpaint_model",
    )
