"""`dream upscale`: enlarge a picture 2x or 4x with added detail."""

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


@common.with_shared_flags
def upscale(
    images: ImagesArg,
    prompt: PromptOption = None,
    scale: Annotated[int, typer.Option("--scale", help="Enlargement: 2 or 4.")] = 4,
    tile: Annotated[int | None, typer.Option(
        "--tile", help="Tile side in pixels (default: the model's size); memory follows the tile.")] = None,
    overlap: Annotated[int | None, typer.Option(
        "--overlap", help="Pixels neighbouring tiles share (default: a quarter tile).")] = None,
    noise_level: Annotated[int | None, typer.Option(
        "--noise-level", help="x4 upscaler only: noise added to the input (default 20).")] = None,
    strength: Strength = None,
    max_pixels: MaxPixels = None,
    flags: dict | None = None,  # the shared flags: see common.with_shared_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Enlarge each IMAGE by --scale; an x4-upscaler preset uses it, any other model a tiled upscaler."""
    from dreamcli.requests import UpscaleRequest
    from dreamcli.tasks.upscale import iter_upscale, read_inputs

    run_image_command(
        f"upscale x{scale}", iter_upscale, read_inputs, UpscaleRequest, images, prompt, flags, json_out, quiet,
        dict(scale=scale, tile=tile, overlap=overlap, noise_level=noise_level, strength=strength,
             max_pixels=max_pixels),
        task_model_key="upscale_model",
    )
