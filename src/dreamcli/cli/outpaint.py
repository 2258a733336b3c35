"""`dream outpaint`: extend a picture beyond its borders."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import user_errors
from dreamcli.cli.image_common import (
    ImageArg,
    MaxPixels,
    Strength,
    build_request,
    output_target,
    run_task,
    slug_text,
    task_settings,
)


def _margin(name: str, what: str):
    return Annotated[int | None, typer.Option(f"--{name}", help=f"Pixels to add {what} (rounded up to 8).")]


@common.with_shared_flags
def outpaint(
    image: ImageArg,
    prompt: Annotated[str, typer.Argument(help="What the wider picture shows.")] = "",
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
    """Extend IMAGE by the given margins; the original pixels are kept exactly."""
    from dreamcli.requests import OutpaintRequest
    from dreamcli.tasks.outpaint import iter_outpaint

    sides = {name: value if value is not None else (all_sides or 0)
             for name, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom))}
    with user_errors():
        settings, used_preset = task_settings(flags, "inpaint_model")
        request = build_request(
            OutpaintRequest, settings, image=image, prompt=prompt, strength=strength, max_pixels=max_pixels, **sides,
        )
        target, fmt = output_target(settings)
        code = run_task(iter_outpaint, request, target, fmt, used_preset, json_out, quiet,
                        slug_text(prompt, "outpaint", image))
    if code:
        raise typer.Exit(code)
