"""`dream info`: show the generation parameters stored in images."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dreamcli.cli.common import emit, user_errors
from dreamcli.errors import InputError


def info(
    images: Annotated[list[str], typer.Argument(help="Images made by dreamcli, A1111 or compatible tools.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """Print an image's prompt, settings, model and seed."""
    from dreamcli.cli.gen import check_image_metadata
    from dreamcli.io.metadata import parse_a1111_parameters, read_metadata

    with user_errors():
        for path in images:
            meta = read_metadata(path)
            if not meta["parameters"] and not meta["dreamcli"]:
                raise InputError(f"{path} has no generation parameters (no dreamcli or A1111 metadata)")
            check_image_metadata(path, meta)  # edited metadata is refused as `gen --from` would refuse it
            if json_out:
                parsed = parse_a1111_parameters(meta["parameters"]) if meta["parameters"] else None
                emit(json.dumps({"path": path, "parameters": meta["parameters"], "a1111": parsed,
                                 "dreamcli": meta["dreamcli"]}))
                continue
            if len(images) > 1:
                emit(f"== {path}")
            emit(meta["parameters"] or "")
            record = meta["dreamcli"]
            if record:
                from dreamcli.families import label

                emit(f"Model path: {record.get('model_path', '')}")
                emit(f"Model family: {label(record.get('family'))}")
                emit(f"Device: {record.get('device')}, {record.get('dtype')}; "
                     + ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items()))
