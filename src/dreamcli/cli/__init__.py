"""The `dream` command line (Typer); heavy libraries load only inside the commands that need them."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamcli import __version__
from dreamcli.cli.bench import bench
from dreamcli.cli.colorize import colorize
from dreamcli.cli.gallery import gallery
from dreamcli.cli.gen import gen
from dreamcli.cli.img2img import img2img
from dreamcli.cli.info import info
from dreamcli.cli.inpaint import inpaint
from dreamcli.cli.outpaint import outpaint
from dreamcli.cli.restore import restore
from dreamcli.cli.serve import serve
from dreamcli.cli.tune import tune
from dreamcli.cli.upscale import upscale

app = typer.Typer(
    name="dream",
    help="Turn prompts and images into images with Stable Diffusion.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion: Typer's own, for bash, zsh, fish, PowerShell
    pretty_exceptions_show_locals=False,  # locals can hold prompts, tokens and huge tensors
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dreamcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """dream: text to image, image to image, inpaint, outpaint, colorize, upscale, restore and DreamBooth tuning."""


app.command("gen")(gen)
app.command("img2img")(img2img)
app.command("info")(info)
app.command("inpaint")(inpaint)
app.command("outpaint")(outpaint)
app.command("colorize")(colorize)
app.command("upscale")(upscale)
app.command("restore")(restore)
app.command("tune")(tune)
app.command("dreambooth-tune", help="Alias of `dream tune`.")(tune)
app.command("bench")(bench)
app.command("serve")(serve)
app.command("gallery")(gallery)


def main() -> None:
    """Entry point of the `dream` console script and of `python -m dreamcli`."""
    app(prog_name="dream")
