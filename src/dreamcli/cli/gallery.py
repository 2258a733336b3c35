"""`dream gallery`: write a folder's images and their parameters as one HTML page (a contact sheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli.common import emit, hint, user_errors
from dreamcli.errors import InputError


def gallery(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", help="Folder of images (dream's outputs, or any tool's PNGs with A1111 parameters).",
        show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="HTML file to write (default: DIR/index.html).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the output file even when it is not a page dream gallery wrote.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No notes on stderr.")] = False,
) -> None:
    """Write a gallery page of DIR: thumbnails, prompts and settings, newest first; prints its path."""
    with user_errors():
        folder = folder.expanduser()
        if not folder.exists():
            raise InputError(f"folder {folder} does not exist: give the folder of images (dream gen's -o)")
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder: give the folder of images (dream gen's -o)")
        out = (output.expanduser() if output is not None else folder / "index.html")
        check_output(out, force)

        from dreamcli.io.gallery import render, scan
        from dreamcli.io.outputs import ensure_outdir, replacing, write_error

        try:
            found = scan(folder)
        except PermissionError as e:
            raise InputError(f"cannot read folder {folder}: {e.strerror or e}") from None
        html = render(found, lambda path: relative_link(path, out.parent)).encode("utf-8")
        ensure_outdir(out.parent)
        try:
            with replacing(out) as f:  # atomically: a reader never sees half a page
                f.write(html)
        except OSError as e:
            raise write_error(out, e) from None
        for path, why in found.skipped:
            hint(f"skipped {path.name}: {why}", quiet)
        count = len(found.items)
        hint(f"{count} image{'s' if count != 1 else ''} in {out}" if count else f"no images in {folder} yet", quiet)
        emit(str(out))


def check_output(out: Path, force: bool) -> None:
    """Refuse to replace a file that is not a gallery page dream wrote (DESIGN: never overwrite), unless --force."""
    from dreamcli.io.gallery import is_gallery

    if out.is_dir():
        raise InputError(f"{out} is a folder: give -o a file name, e.g. {out / 'index.html'}")
    if out.exists() and not force and not is_gallery(out):
        raise InputError(f"{out} exists and is not a page dream gallery wrote: choose another file with -o, "
                         "or pass --force to replace it")


def relative_link(path: Path, base: Path) -> str:
    """The <img src> for `path` seen from a page in folder `base`: a relative URL, so the folder can move."""
    import os
    from urllib.parse import quote

    try:
        relative = os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return path.resolve().as_uri()
    return quote(Path(relative).as_posix())
