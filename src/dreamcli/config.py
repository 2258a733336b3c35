"""Settings from built-in defaults, the user config file and presets, merged by precedence."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

from dreamcli.errors import DreamError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# What applies when nothing else says otherwise (flags, then presets, then the user config win).
BUILTIN_DEFAULTS = {
    "steps": 30,
    "guidance": 7.5,
    "negative": "",
    "num_images": 1,
    "device": "auto",
    "dtype": "auto",
    "outdir": "outputs",
    "format": "png",
}
DEFAULT_PRESET = "demo"  # used when no model is named anywhere: small, offline, ships in the wheel

SETTING_KEYS = {
    "model", "model_config", "scheduler", "steps", "guidance", "guidance_rescale", "negative", "width", "height",
    "num_images", "seed", "lora", "device", "dtype", "offload", "vae_tiling", "attention_slicing",
    "outdir", "format", "allow_unsafe_pickle", "compile", "channels_last", "fuse_qkv", "batch_size", "quantize",
    "no_t5", "hires", "hires_upscaler", "hires_strength", "hires_steps", "embedding",
}
# Keys a preset may carry for other tasks (inpaint, upscale, tune) or for people reading it.
PRESET_ONLY_KEYS = {"description", "inpaint_model", "upscale_model", "controlnet", "tile_controlnet"}
CONFIG_ONLY_KEYS = {"preset", "max_pixels"}  # max_pixels: see limits.py
PACKAGE_PREFIX = "package:"  # a path inside the installed dreamcli package (the demo model)


def dreamcli_home() -> Path:
    """The user's config directory: $DREAMCLI_HOME, else $XDG_CONFIG_HOME/dreamcli or ~/.config/dreamcli."""
    if os.environ.get("DREAMCLI_HOME"):
        return Path(os.environ["DREAMCLI_HOME"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "dreamcli"


def cache_dir() -> Path:
    """Where dreamcli keeps caches: $DREAMCLI_HOME/cache, else $XDG_CACHE_HOME/dreamcli or ~/.cache/dreamcli."""
    if os.environ.get("DREAMCLI_HOME"):
        return dreamcli_home() / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dreamcli"


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path} is not valid TOML ({e}): fix or remove it") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def _check_keys(data: dict, allowed: set, path: Path) -> None:
    # Tables (like [tune]) belong to other commands; unknown plain keys are most likely typos.
    unknown = sorted(k for k, v in data.items() if k not in allowed and not isinstance(v, dict))
    if unknown:
        raise InputError(
            f"{path}: unknown key {unknown[0]!r}: use one of {', '.join(sorted(allowed))}"
        )


def _resolve_paths(data: dict, base: Path) -> dict:
    # "./x" in a file means next to that file, so presets can travel with their weights.
    out = dict(data)
    for key in ("model", "model_config", "inpaint_model", "upscale_model", "controlnet", "tile_controlnet", "outdir"):
        value = out.get(key)
        if isinstance(value, str) and value.startswith(("./", "../")):
            out[key] = str((base / value).resolve())
    if "control" in out:
        _check_control_table(out["control"], base)
    if isinstance(out.get("control"), dict):  # [control] TYPE = "./controlnet-folder"
        out["control"] = {kind: str((base / ref).resolve()) if isinstance(ref, str) and ref.startswith(("./", "../"))
                          else ref for kind, ref in out["control"].items()}
    return out


def _check_control_table(table, where: Path) -> None:
    """A `[control]` table maps control types to ControlNet references (a typo would never be used)."""
    from dreamcli.imageops.control import TYPES

    if not isinstance(table, dict):
        raise InputError(f"{where}: control must be a table: [control] then TYPE = \"ControlNet folder or repo id\"")
    for kind, ref in table.items():
        if kind not in TYPES:
            raise InputError(f"{where}: [control] {kind!r} is no control type: use {', '.join(TYPES)}")
        if not isinstance(ref, str) or not ref:
            raise InputError(f"{where}: [control] {kind} must be a ControlNet folder, file or repo id in quotes")


def load_user_config() -> dict:
    """The user's config.toml as a dict ({} when there is none)."""
    path = dreamcli_home() / "config.toml"
    if not path.is_file():
        return {}
    data = _read_toml(path)
    _check_keys(data, SETTING_KEYS | CONFIG_ONLY_KEYS, path)
    return _resolve_paths(data, path.parent)


def builtin_presets_dir() -> Path:
    """The folder of the built-in preset files.

    They live in the project's top-level presets/ folder; the wheel ships them as dreamcli/presets/
    (pyproject.toml maps that package onto presets/). A checkout, or an editable install of it, has
    them two levels above this module instead.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "presets", here.parent.parent / "presets"):
        if folder.is_dir():
            return folder
    raise DreamError(f"the built-in presets are missing (looked in {here / 'presets'}): reinstall dreamcli")


def _builtin_presets() -> dict[str, Path]:
    return {p.stem: p for p in builtin_presets_dir().glob("*.toml")}


def _user_presets() -> dict[str, Path]:
    folder = dreamcli_home() / "presets"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.glob("*.toml")}


def preset_names() -> list[str]:
    """All preset names, built-in and the user's."""
    return sorted({**_builtin_presets(), **_user_presets()})


def load_preset(name: str) -> dict:
    """A preset's settings; a user preset of the same name replaces the built-in one."""
    found = {**_builtin_presets(), **_user_presets()}
    if name not in found:
        raise InputError(f"unknown preset {name!r}: use one of {', '.join(sorted(found))}")
    path = found[name]
    data = _read_toml(path)
    _check_keys(data, SETTING_KEYS | PRESET_ONLY_KEYS, path)
    return _resolve_paths(data, path.parent)


def upscaler_tables() -> dict[str, str]:
    """Upscaler names the `[upscalers]` tables define (NAME = file or hub file), in every preset and then the
    user config, later ones winning; a "./x" file is next to the TOML file that names it."""
    names: dict[str, str] = {}
    user = dreamcli_home() / "config.toml"
    for path in [*_builtin_presets().values(), *_user_presets().values(), *([user] if user.is_file() else [])]:
        table = _read_toml(path).get("upscalers", {})
        if not isinstance(table, dict):
            raise InputError(f"{path}: [upscalers] must be a table of NAME = \"file or owner/repo/file\"")
        for name, ref in table.items():
            if not isinstance(ref, str):
                raise InputError(f"{path}: upscalers.{name} must be a file name in quotes")
            names[name] = str((path.parent / ref).resolve()) if ref.startswith(("./", "../")) else ref
    return names


def package_path(ref: str) -> Path:
    """Turn `package:demo/model` into the path of that folder inside the installed package."""
    return Path(str(resources.files("dreamcli").joinpath(ref[len(PACKAGE_PREFIX):])))


def merge_settings(flags: dict, base: dict | None = None) -> tuple[dict, str | None]:
    """Merge built-in < user config < preset < base (e.g. an image's metadata) < flags.

    Returns the merged settings and the preset name that was used (None when none). A preset named
    in the user config applies only when the command line names neither a model nor a preset.
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    base = dict(base or {})
    model = flags.get("model")
    if model and not Path(model).expanduser().exists():
        if model in preset_names() and "preset" not in flags:
            flags["preset"] = flags.pop("model")  # `-m sdxl` means the sdxl preset, with its sizes
    elif model:
        flags["model"] = str(Path(model).expanduser().resolve())  # recorded paths work from anywhere
    user = load_user_config()
    preset_name = flags.pop("preset", None) or base.pop("preset", None)
    if preset_name is None and "model" not in flags and "model" not in base:
        preset_name = user.get("preset") or (None if user.get("model") else DEFAULT_PRESET)
    preset = load_preset(preset_name) if preset_name else {}
    user = {k: v for k, v in user.items() if k != "preset"}
    merged = {**BUILTIN_DEFAULTS, **user, **preset, **base, **flags}
    merged.pop("description", None)
    return merged, preset_name
