"""Looking inside weight files without loading them: family detection and safety checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dreamcli.errors import CorruptCheckpoint, InputError, UnsafeCheckpoint

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FAMILIES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# Hugging Face repos whose configs describe each family's components; single-file checkpoints
# carry only weights, so diffusers builds the pipeline from these (the same defaults diffusers uses).
FAMILY_CONFIG_REPOS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


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


def detect_family(keys: dict[str, list[int]]) -> str | None:
    """SD1/SD2/SDXL from original (LDM) checkpoint key names: the text encoders differ per family."""
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"  # SDXL's second text encoder (OpenCLIP bigG)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # SD 2.x's OpenCLIP ViT-H text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"  # OpenAI CLIP ViT-L
    return None


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
    if suffix != ".safetensors":
        raise InputError(f"{path} is not a model file: give a .safetensors checkpoint or a diffusers folder")
    family = detect_family(safetensors_keys(path))
    if family is None:
        raise InputError(
            f"{path.name} is not a Stable Diffusion checkpoint (no SD1/SD2/SDXL text encoder keys); "
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
        raise InputError(f"{path.name} is not a Stable Diffusion checkpoint")
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
