"""Looking inside weight files without loading them: family detection and safety checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from struct import error as struct_error

from dreamcli.errors import CorruptCheckpoint, InputError, UnsafeCheckpoint

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def safetensors_keys(path: Path, what: str = "") -> dict[str, list[int]]:
    """Tensor names and shapes from a .safetensors header, checking the file is complete.

    Reading only the header is instant even for 7 GB files; comparing the offsets it declares with
    the file size catches truncated downloads before diffusers fails with a less helpful error.
    `what` ("LoRA ") starts the error messages, which name the file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size == 0:
                raise ValueError("the file is empty")
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("header length out of range")
            if n > size - 8:  # cut inside its header
                end = 0
            else:
                header = json.loads(f.read(n))
                header.pop("__metadata__", None)
                end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
                shapes = {name: list(t["shape"]) for name, t in header.items()}
    except OSError as e:  # permission denied, a folder named *.safetensors, an I/O error
        raise InputError(f"cannot read {what}{path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        if isinstance(e, UnicodeDecodeError | json.JSONDecodeError):
            reason = "its header is not JSON"
        elif isinstance(e, ValueError):
            reason = str(e)  # ours, above
        else:  # JSON, but not a table of tensors with shapes and offsets
            reason = "its header does not describe tensors"
        raise CorruptCheckpoint(
            f"{what}{path} is not a readable .safetensors file ({reason}): download it again"
        ) from None
    if 8 + n + end > size:
        raise CorruptCheckpoint(
            f"{what}{path} is not a readable .safetensors file: truncated ({size} bytes, its header promises "
            f"{'more than ' if end == 0 else ''}{8 + n + end}): download it again"
        )
    return shapes


def gguf_keys(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes of a GGUF file (quantised Flux/SD3 transformers), through the gguf package."""
    from importlib.util import find_spec

    if find_spec("gguf") is None:
        raise InputError(f"reading {path.name} needs the gguf package: pip install gguf")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError, KeyError, IndexError, struct_error) as e:
        raise CorruptCheckpoint(f"{path} is not a readable GGUF file ({type(e).__name__}): download it again") from None
    return {tensor.name: [int(n) for n in reversed(tensor.shape)] for tensor in reader.tensors}


def file_keys(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes of a .safetensors or .gguf file ({} for a pickle, which only loading reveals)."""
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return gguf_keys(path)
    return safetensors_keys(path) if suffix == ".safetensors" else {}


def detect_family(keys: dict[str, list[int]]) -> str | None:
    """The family a checkpoint's tensor names say (the registry asks each family), or None."""
    from dreamcli import families

    family = families.for_keys(keys)
    return family.name if family else None


def refuse_pickle(path: Path, allowed: bool, what: str = "") -> None:
    """Refuse a pickle file (it can run code when loaded) unless the user passed --allow-unsafe-pickle."""
    if not allowed:
        raise UnsafeCheckpoint(
            f"{what}{path.name} is a pickle ({path.suffix.lower()}), which can run arbitrary code when loaded: "
            "use a .safetensors version, or pass --allow-unsafe-pickle if you trust its source"
        )


def check_single_file(path: Path, allow_unsafe_pickle: bool) -> str:
    """Validate a single-file checkpoint and return its family; refuses pickles unless allowed."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        refuse_pickle(path, allow_unsafe_pickle)
        return _pickle_family(path)
    if suffix not in (".safetensors", ".gguf"):
        raise InputError(f"{path} is not a model file: give a .safetensors checkpoint or a diffusers folder")
    keys = file_keys(path)
    family = detect_family(keys)
    if family is None:
        from dreamcli.families import UnsupportedModel, supported

        if any(key.startswith(("control_model.", "controlnet_cond_embedding.")) for key in keys):
            raise UnsupportedModel(
                f"{path.name} is a ControlNet, not a base model, which dream cannot run as -m: dream runs "
                f"{supported()} models"
            )
        raise InputError(
            f"{path.name} is not a model checkpoint dream knows (its tensor names match none of {supported()}); "
            "if it is a LoRA, pass it with --lora"
        )
    return family


def _pickle_family(path: Path) -> str:
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # a pickle can fail in any way
        raise CorruptCheckpoint(f"cannot read {path}: {e}") from None
    state = state.get("state_dict", state)
    family = detect_family({k: [] for k in state})
    if family is None:
        from dreamcli.families import supported

        raise InputError(f"{path.name} is not a model checkpoint dream knows (none of {supported()})")
    return family


def file_sha256(path: Path, cache_file: Path | None = None) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) so multi-GB files are hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    if cache_file:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a hash cache we cannot write only costs time
    return cache[key]
