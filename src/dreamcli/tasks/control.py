"""ControlNet steering shared by gen, img2img and inpaint: the maps, the call arguments, and the record."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dreamcli.errors import InputError
from dreamcli.requests import ControlUnit


def check_controls(units: tuple[ControlUnit, ...]) -> None:
    """Read every control picture before any model loads (a damaged one stops the run with one line)."""
    from dreamcli.tasks.image_common import open_input

    for unit in units:
        open_input(unit.image, f"control image ({unit.type})")


def control_pipeline(task: str, request):
    """(pipeline, loaded model, [(name, hash)]) for a request with ControlNets."""
    from dreamcli.engine import control_pipeline_for

    return control_pipeline_for(task, request.model, tuple(unit.model for unit in request.control))


def steer(task: str, request, size: tuple[int, int]):
    """A request's ControlNets for one task: (pipeline, loaded model, call arguments, record), the maps made at the
    size the model will draw nearest to `size`."""
    from dreamcli.tasks.image_common import draw_size

    pipe, loaded, models = control_pipeline(task, request)
    maps = control_maps(request.control, draw_size(loaded, size))
    return pipe, loaded, control_kwargs(pipe, request.control, maps), control_record(request.control, models,
                                                                                      maps[0].size)


def control_maps(units: tuple[ControlUnit, ...], size: tuple[int, int]) -> list[Image.Image]:
    """Each unit's map at the working size: the picture resized, then its preprocessor run (raw: as it is)."""
    from dreamcli.imageops.control import control_map
    from dreamcli.tasks.image_common import open_input

    maps = []
    for unit in units:
        picture = open_input(unit.image, f"control image ({unit.type})").convert("RGB")
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        maps.append(control_map(unit.type, picture, unit.low, unit.high))
    return maps


def control_kwargs(pipe, units: tuple[ControlUnit, ...], maps: list[Image.Image]) -> dict:
    """The ControlNet arguments of a diffusers call: one unit as plain values, several as lists (MultiControlNet).

    Text-to-image ControlNet pipelines take the map as `image`; the image-to-image and inpaint ones (and SD3's and
    Flux's) as `control_image`.
    """
    import inspect

    accepted = inspect.signature(pipe.__call__).parameters
    key = "control_image" if "control_image" in accepted else "image"
    if type(getattr(pipe, "controlnet", None)).__name__ == "ControlNetUnionModel":
        return union_kwargs(units, maps, key, "guess_mode" in accepted)
    one = len(units) == 1
    kwargs = {
        key: maps[0] if one else maps,
        "controlnet_conditioning_scale": units[0].scale if one else [unit.scale for unit in units],
        "control_guidance_start": units[0].start if one else [unit.start for unit in units],
        "control_guidance_end": units[0].end if one else [unit.end for unit in units],
    }
    if "control_mode" in accepted and not one:
        # Flux's image-to-image and inpaint pipelines run no ControlNet of a MultiControlNet given no modes
        # (diffusers 0.42 zips the nets with an empty mode list): "no mode" for each.
        kwargs["control_mode"] = [None] * len(units)
    guess = any(unit.guess_mode for unit in units)
    if guess:
        if "guess_mode" not in accepted:
            raise InputError(f"--guess-mode has no effect on {type(pipe).__name__}: leave it out")
        kwargs["guess_mode"] = True
    return kwargs


# SDXL ControlNet-Union's control modes (xinsir/controlnet-union-sdxl-1.0's model card): dream's TYPE -> mode.
UNION_MODES = {"openpose": 0, "depth": 1, "softedge": 2, "scribble": 2, "canny": 3, "lineart": 3, "mlsd": 3,
               "normal": 4}


def union_kwargs(units: tuple[ControlUnit, ...], maps: list[Image.Image], key: str, takes_guess: bool) -> dict:
    """A ControlNet-Union call: every map with its control mode, one model, one weight and one step range."""
    for unit in units:
        if unit.type not in UNION_MODES:
            raise InputError(f"a ControlNet-Union model cannot tell what a {unit.type} map is: use one of "
                             f"{', '.join(UNION_MODES)} (a ready map as the type it is, e.g. canny)")
    for name in ("scale", "start", "end"):
        if len({getattr(unit, name) for unit in units}) > 1:
            raise InputError(f"a ControlNet-Union model takes one {name} for all its maps: give every --control the "
                             "same one")
    kwargs = {key: maps, "control_mode": [UNION_MODES[unit.type] for unit in units],
              "controlnet_conditioning_scale": units[0].scale, "control_guidance_start": units[0].start,
              "control_guidance_end": units[0].end}
    if any(unit.guess_mode for unit in units) and takes_guess:
        kwargs["guess_mode"] = True
    return kwargs


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (what the record keeps of a control picture)."""
    from dreamcli.checkpoints import file_sha256 as sha256

    return sha256(Path(path))


def control_record(units: tuple[ControlUnit, ...], models: list[tuple[str, str]], size: tuple[int, int]) -> list[dict]:
    """What the image record keeps per ControlNet: the unit, its picture's hash, its model's name and hash, and the
    size its map was made at."""
    from dataclasses import asdict

    from dreamcli.imageops.control import a1111_module

    return [
        {**asdict(unit), "module": a1111_module(unit.type), "image_sha256": file_sha256(unit.image),
         "model_name": name, "model_hash": short, "map_size": list(size)}
        for unit, (name, short) in zip(units, models, strict=True)
    ]


def recorded_units(path: str, record: dict) -> list[dict]:
    """The ControlNet units an image's record holds, each checked against its picture: the same file (by SHA-256)
    must still be at its path, or one line says which file `--from` needs."""
    from dreamcli.requests import shown

    units = record.get("request", {}).get("control") or []
    hashes = {i: unit.get("image_sha256") for i, unit in enumerate(record.get("control") or [])
              if isinstance(unit, dict)}
    if not isinstance(units, list) or not all(isinstance(unit, dict) for unit in units):
        raise InputError(f"{path}: its dreamcli record's request.control must be a list of objects, got {shown(units)}")
    for i, unit in enumerate(units):
        image = unit.get("image")
        if not isinstance(image, str) or not Path(image).is_file():
            raise InputError(f"{path} was made with control image {image} ({unit.get('type')}), which is not there "
                             f"any more: put it back, or give the map again with --control {unit.get('type')}:IMAGE")
        want = hashes.get(i)
        if want and file_sha256(image) != want:
            raise InputError(f"{path} was made with a different control image at {image} (its SHA-256 was "
                             f"{want[:12]}...): put the original back, or pass --control {unit.get('type')}:{image} "
                             "to use this one")
    return units
