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

# Optional here only so that `dream upscale --upscaler list` needs no picture; a run without one is refused.
OptionalImages = Annotated[list[str] | None, typer.Argument(
    metavar="IMAGE", show_default=False, help=ImagesArg.__metadata__[0].help)]


@common.with_shared_flags
def upscale(
    images: OptionalImages = None,
    prompt: PromptOption = None,
    scale: Annotated[int, typer.Option(
        "--scale", help="Enlargement: 2 or 4 (1 to 8 with --upscaler).")] = 4,
    upscaler: Annotated[str | None, typer.Option(
        "--upscaler", help="A GAN or transformer upscaler (Real-ESRGAN, UltraSharp, SwinIR, HAT, DAT, ...): a "
        ".pth/.safetensors file or a name (`--upscaler list` shows them). Alone it does the whole enlargement; "
        "with --strength the model then redraws its result in tiles.")] = None,
    tile: Annotated[int | None, typer.Option(
        "--tile", help="Tile side in pixels (default: the model's size; with --upscaler alone, the upscaler's "
        "input tile, 256); memory follows the tile.")] = None,
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
    """Enlarge each IMAGE by --scale: with an upscaler model, an x4-upscaler preset, or a tiled redraw by the model."""
    from dreamcli.requests import UpscaleRequest
    from dreamcli.tasks.upscale import iter_upscale, read_inputs

    if upscaler == "list":
        from dreamcli.upscalers import available

        with common.user_errors():
            for name, ref in sorted(available().items(), key=lambda item: item[0].lower()):
                common.emit(f"{name}\t{ref}")  # the name, a tab, and its file (or hub file, fetched on first use)
        return
    if not images:
        common.error_line("no image: give the pictures to enlarge (or `--upscaler list` to see the upscalers)")
        raise typer.Exit(2)
    run_image_command(
        f"upscale x{scale}", iter_upscale, read_inputs, UpscaleRequest, images, prompt, flags, json_out, quiet,
        dict(scale=scale, tile=tile, overlap=overlap, noise_level=noise_level, strength=strength,
             max_pixels=max_pixels, upscaler=upscaler, redraw=upscaler is None or strength is not None),
        task_model_key="upscale_model",
    )
