"""Validated request dataclasses: one per task, field names as in diffusers' `__call__`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from dreamcli.errors import InputError
from dreamcli.schedulers import SCHEDULERS

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
FORMATS = ("png", "jpg", "webp")
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; the per-image offset must not overflow


@dataclass(frozen=True)
class LoraRef:
    """One LoRA file or folder and the scale it is applied with."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraRef:
        """Parse `PATH[:SCALE]`; a colon followed by a non-number stays part of the path."""
        path, sep, tail = text.rpartition(":")
        if sep and path and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", tail):
            return cls(path, float(tail))
        return cls(text, 1.0)

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


@dataclass(frozen=True)
class ModelOptions:
    """What to load and how: shared by every task so that one loaded model serves them all."""

    model: str
    model_config: str | None = None
    scheduler: str | None = None
    loras: tuple[LoraRef, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False
    allow_unsafe_pickle: bool = False

    def __post_init__(self):
        if not self.model:
            raise InputError("no model given: pass -m/--model or --preset")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(
                f"unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}"
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")


def check_size(name: str, value: int | None) -> None:
    """Width and height must be positive multiples of 8 (the VAE downsamples by 8)."""
    if value is None:
        return
    if value < 8:
        raise InputError(f"{name} {value} is too small: use a multiple of 8 of at least 8")
    if value % 8:
        lower = value - value % 8
        raise InputError(f"{name} {value} is not a multiple of 8: use {lower} or {lower + 8}")


@dataclass(frozen=True)
class GenRequest:
    """Text to image: everything that determines the pictures, and nothing about output files."""

    prompt: str
    model: ModelOptions
    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    width: int | None = None  # None: the model's native size
    height: int | None = None
    num_images: int = 1
    seed: int | None = None  # None: a random base seed, drawn and recorded by the task

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise InputError(f"prompt must be text, got {self.prompt!r}")
        if self.num_inference_steps < 1:
            raise InputError(f"steps {self.num_inference_steps} is too few: use 1 or more")
        if self.guidance_scale < 0:
            raise InputError(f"guidance {self.guidance_scale:g} is negative: use 0 or more (7.5 is usual)")
        if self.num_images < 1:
            raise InputError(f"num-images {self.num_images} is too few: use 1 or more")
        check_size("width", self.width)
        check_size("height", self.height)
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - self.num_images:
            raise InputError(f"seed {self.seed} is out of range: use 0 to {MAX_SEED - self.num_images}")

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (what the image metadata stores)."""
        data = asdict(self)
        data["model"]["loras"] = [str(LoraRef(**lora)) for lora in data["model"]["loras"]]
        return data


# Short names used by flags, presets, config files and prompt-file JSON lines.
SETTING_TO_FIELD = {
    "prompt": "prompt",
    "negative": "negative_prompt",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "width": "width",
    "height": "height",
    "num_images": "num_images",
    "seed": "seed",
}
MODEL_SETTINGS = tuple(f.name for f in fields(ModelOptions) if f.name != "loras") + ("lora",)
_TYPES = {
    "steps": int, "num_images": int, "seed": int, "width": int, "height": int,
    "guidance": float, "prompt": str, "negative": str,
}


def coerce_setting(key: str, value, where: str):
    """Check the type of one request setting from a file, naming the file and key when it is wrong."""
    want = _TYPES.get(key)
    if want is None or value is None:
        return value
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, want):
        raise InputError(f"{where}: {key} must be {want.__name__}, got {value!r}")
    return value


def model_options_from(settings: dict) -> ModelOptions:
    """Build ModelOptions from merged settings (short names)."""
    loras = settings.get("lora") or ()
    if isinstance(loras, str):
        loras = (loras,)
    return ModelOptions(
        model=settings.get("model") or "",
        model_config=settings.get("model_config"),
        scheduler=settings.get("scheduler"),
        loras=tuple(lora if isinstance(lora, LoraRef) else LoraRef.parse(lora) for lora in loras),
        device=settings.get("device") or "auto",
        dtype=settings.get("dtype") or "auto",
        offload=bool(settings.get("offload")),
        vae_tiling=bool(settings.get("vae_tiling")),
        attention_slicing=bool(settings.get("attention_slicing")),
        allow_unsafe_pickle=bool(settings.get("allow_unsafe_pickle")),
    )


def gen_request_from(settings: dict, model: ModelOptions | None = None) -> GenRequest:
    """Build a GenRequest from merged settings (short names), validating every value."""
    kwargs = {
        field_name: settings[key]
        for key, field_name in SETTING_TO_FIELD.items()
        if settings.get(key) is not None
    }
    return GenRequest(model=model or model_options_from(settings), **kwargs)
