"""Validated request dataclasses: one per task, field names as in diffusers' `__call__`."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, fields

from dreamcli.errors import InputError
from dreamcli.schedulers import SCHEDULERS

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
# Memory options (memory.py applies them). "auto": on CUDA, what fits the free memory; "none": nothing.
OFFLOADS = ("auto", "none", "model", "sequential", "group")
QUANTIZES = ("auto", "none", "fp8", "nf4", "int8")
FORMATS = ("png", "jpg", "webp")
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; the per-image offset must not overflow
# Images are made one batch at a time, but every image of a request is planned (and, across processes,
# shared out) up front: a million is more than a night of any GPU, and its plan still fits in memory.
MAX_NUM_IMAGES = 1_000_000
# A side longer than this is refused whatever the other: no model draws sensibly at such shapes (SDXL
# trained up to 4:1), and `-W 100000` against a 128 px preset height still passes the pixel limit.
MAX_SIDE = 16384
# Refused before any model loads; the model's own scheduler then sets the real limit (1000 timesteps
# for Stable Diffusion, 50 for LCM): see schedulers.check_steps.
MAX_STEPS = 10_000
# Pillow's Gaussian blur fails past a radius of about 1e14; a feathering wider than the largest picture
# (4096 px at the default pixel limit) blurs the whole mask away anyway.
MAX_MASK_BLUR = 4096.0
# A LoRA's rank above its layer's width adds weights but no capacity (SD and SDXL layers are at most
# 1280 wide, 2048 for SDXL's text features); ranks like 1e6 would only exhaust memory.
MAX_RANK = 2048

# The flag (or setting) a field is set by, for messages; other fields are named with dashes for underscores.
FIELD_LABELS = {
    "hires_scale": "hires",
    "num_inference_steps": "steps", "guidance_scale": "guidance", "negative_prompt": "negative",
    "controlnet_conditioning_scale": "controlnet-scale", "instance_data_dir": "images", "class_word": "class",
    "output_dir": "outdir", "instance_prompt": "prompt", "max_train_steps": "steps", "learning_rate": "lr",
    "lora_alpha": "alpha", "lora_layers": "layers", "train_batch_size": "batch-size",
    "gradient_accumulation_steps": "grad-accum", "with_prior_preservation": "prior",
    "prior_loss_weight": "prior-weight", "num_class_images": "class-images", "class_data_dir": "class-dir",
    "checkpointing_steps": "checkpoint-every", "validation_steps": "validation-every",
    "num_validation_images": "validation-images",
    # A preset's steps and guidance are what class images are made with.
    "class_steps": "steps for class images", "class_guidance": "guidance for class images",
}
_KINDS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def label(field_name: str) -> str:
    """The name a user knows a request field by (its flag)."""
    return FIELD_LABELS.get(field_name, field_name.replace("_", "-"))


def shown(value) -> str:
    """A value as a message shows it: its repr, cut short (a pasted novel stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value_type(name: str, value, kind: str, example=None) -> None:
    """Refuse a value of the wrong type (bool is not a number) or a float that is NaN or infinite."""
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, bool)
    hint = f" (e.g. {example})" if example is not None and kind != "bool" else ""
    if not ok:
        raise InputError(f"{name} must be {_KINDS[kind]}{hint}, got {shown(value)}")
    if kind == "float" and not math.isfinite(value):
        raise InputError(f"{name} {value} is not a finite number: give a number{hint}")


def check_field_types(request) -> None:
    """Check every int, float, str and bool field of a request dataclass against its annotation.

    Requests are built from flags, presets, prompt-file JSON and image metadata, so any value can
    arrive; checked first, the range checks that follow can compare without a TypeError.
    """
    for f in fields(request):
        kind, _, optional = f.type.partition(" | ")
        value = getattr(request, f.name)
        if kind not in _KINDS or (value is None and optional == "None"):
            continue
        check_value_type(label(f.name), value, kind, None if f.default is MISSING else f.default)


def check_path_text(name: str, value) -> None:
    """A path given as text must be one the OS can take (no NUL, which no file name can hold)."""
    if isinstance(value, str) and "\x00" in value:
        raise InputError(f"{name} {shown(value)} contains a NUL character: give a real path")


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

    def __post_init__(self):
        check_value_type("lora", self.path, "str")
        check_path_text("lora", self.path)
        check_value_type(f"lora {self.path} scale", self.scale, "float", 1.0)

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet: its preprocessor type, the picture it reads, the model, and how strongly and when it steers.

    `model` is a model reference (folder, hub id, single file), resolved from `--control-model` or the preset's
    `[control]` table before the request is built, so that a record alone re-makes the picture.
    """

    type: str  # "canny", "raw" (the image is already a map), or a controlnet-aux type (imageops/control.py)
    image: str  # the picture's path
    model: str
    scale: float = 1.0  # diffusers' controlnet_conditioning_scale (A1111's Weight)
    start: float = 0.0  # the fraction of steps where it starts to steer (control_guidance_start)
    end: float = 1.0  # ... and stops (control_guidance_end)
    guess_mode: bool = False  # the ControlNet sees no prompt (A1111's "ControlNet is more important")
    low: float = 100.0  # canny thresholds on 0-255 gradient magnitudes
    high: float = 200.0

    def __post_init__(self):
        from dreamcli.imageops.control import TYPES

        check_field_types(self)
        if self.type not in TYPES:
            raise InputError(f"unknown control type {self.type!r}: use one of {', '.join(TYPES)} (TYPE:IMAGE[:SCALE])")
        check_path_text("control image", self.image)
        check_path_text("control-model", self.model)
        if not self.image:
            raise InputError(f"--control {self.type}: no image: write TYPE:IMAGE[:SCALE], e.g. canny:photo.png")
        if not self.model:
            raise InputError(f"no ControlNet model for {self.type}: pass --control-model {self.type}=REF")
        if not 0 <= self.scale <= 10:
            raise InputError(f"control scale {self.scale:g} is out of range: use 0 to 10 (1 is usual)")
        if not 0 <= self.start < self.end <= 1:
            raise InputError(f"control start {self.start:g} and end {self.end:g}: use 0 <= start < end <= 1 "
                             "(fractions of the steps)")
        if not 0 <= self.low <= self.high:
            raise InputError(f"canny thresholds {self.low:g}/{self.high:g}: use 0 <= --canny-low <= --canny-high")

    @classmethod
    def parse(cls, text: str) -> tuple[str, str, float]:
        """(type, image, scale) from `TYPE:IMAGE[:SCALE]`; a colon followed by a non-number stays in the path."""
        kind, sep, rest = str(text).partition(":")
        if not sep or not rest:
            raise InputError(f"--control {text!r}: write TYPE:IMAGE[:SCALE], e.g. canny:photo.png:0.8")
        ref = LoraRef.parse(rest)  # the same PATH[:SCALE] rule as --lora
        return kind.strip().lower(), ref.path, ref.scale


def control_units_from(settings: dict) -> tuple[ControlUnit, ...]:
    """The ControlNets merged settings ask for: `control_specs` (--control TYPE:IMAGE[:SCALE]) or recorded units
    (`control_units`, from an image's record), each with its model from `--control-model TYPE=REF` or the
    `[control]` table of the preset or user config. A missing picture is refused here, before any model loads."""
    from pathlib import Path

    recorded = settings.get("control_units")
    specs = settings.get("control_specs") or ()
    table = settings.get("control") or {}
    if not isinstance(table, dict):
        raise InputError(f"control must be a table of TYPE = \"model\" in a preset, got {shown(table)}")
    table = dict(table)
    given = {}  # --control-model TYPE=REF
    for item in settings.get("control_models") or ():
        kind, sep, ref = str(item).partition("=")
        if not sep or not kind.strip() or not ref.strip():
            raise InputError(f"--control-model {item!r}: write TYPE=REF, e.g. canny=lllyasviel/control_v11p_sd15_canny")
        ref = ref.strip()
        # A local folder or file is recorded by its absolute path, so that `--from` finds it from anywhere.
        given[kind.strip().lower()] = str(Path(ref).expanduser().resolve()) if Path(ref).expanduser().exists() else ref
    table.update(given)
    if recorded and not specs:
        names = {f.name for f in fields(ControlUnit)}
        if not isinstance(recorded, list | tuple) or not all(isinstance(unit, dict) for unit in recorded):
            raise InputError(f"control must be a list of ControlNet units, got {shown(recorded)}")
        for unit in recorded:
            missing = sorted({"type", "image", "model"} - unit.keys())
            if missing:
                raise InputError(f"a recorded ControlNet unit has no {missing[0]}: it cannot be re-made")
        # A recorded unit keeps its own model unless --control-model names another for its type.
        return tuple(ControlUnit(**{**{k: v for k, v in unit.items() if k in names},
                                    **({"model": given[unit["type"]]} if str(unit["type"]) in given else {})})
                     for unit in recorded)
    if isinstance(specs, str):
        specs = (specs,)
    units = []
    for spec in specs:
        kind, image, scale = ControlUnit.parse(spec)
        model = table.get(kind) or ""
        _check_aux(kind)
        if kind in _known_types() and not model:
            raise InputError(f"no ControlNet model for control type {kind}: pass --control-model {kind}=REF, or add "
                             f"{kind} = \"REF\" to the preset's [control] table")
        unit = ControlUnit(
            type=kind, image=str(Path(image).expanduser().resolve()) if image else image, model=str(model), scale=scale,
            start=_number(settings, "control_start", 0.0), end=_number(settings, "control_end", 1.0),
            guess_mode=settings.get("guess_mode") or False,
            low=_number(settings, "canny_low", 100.0), high=_number(settings, "canny_high", 200.0))
        if not Path(image).expanduser().is_file():
            raise InputError(f"--control {spec}: control image {image} not found: give an existing picture")
        units.append(unit)
    return tuple(units)


def _check_aux(kind: str) -> None:
    """controlnet-aux types need the package: say so before any model loads."""
    import importlib.util

    from dreamcli.imageops.control import AUX_DETECTORS

    if kind in AUX_DETECTORS and importlib.util.find_spec("controlnet_aux") is None:
        raise InputError(f"control type {kind} needs controlnet-aux: pip install controlnet-aux (its "
                         f"{AUX_DETECTORS[kind][0]} weights come from lllyasviel/Annotators), or give a ready map "
                         f"with --control raw:MAP")


def _known_types() -> tuple[str, ...]:
    from dreamcli.imageops.control import TYPES

    return TYPES


def _number(settings: dict, key: str, default: float) -> float:
    value = settings.get(key)
    return default if value is None else value


@dataclass(frozen=True)
class ModelOptions:
    """What to load and how: shared by every task so that one loaded model serves them all."""

    model: str
    model_config: str | None = None
    scheduler: str | None = None
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[str, ...] = ()  # textual-inversion files, FILE[:WORD] (embeddings.py)
    device: str = "auto"
    dtype: str = "auto"
    offload: str | None = None  # None or "auto": chosen to fit on CUDA; "none" | "model" | "sequential" | "group"
    quantize: str | None = None  # None or "auto": chosen to fit on CUDA; "none" | "fp8" | "nf4" | "int8"
    no_t5: bool = False  # SD3 without its T5-XXL encoder (9.5 GB less; prompts lose some detail)
    vae_tiling: bool = False
    attention_slicing: bool = False
    allow_unsafe_pickle: bool = False
    compile: bool = False  # torch.compile the UNet (regional); the first call pays the warm-up
    channels_last: bool | None = None  # None: on for CUDA, off elsewhere (no gain measured on CPU)
    fuse_qkv: bool | None = None  # None: on for CUDA while no LoRA is active

    def __post_init__(self):
        if not self.model:
            raise InputError("no model given: pass -m/--model or --preset")
        _normalize_memory(self)
        check_field_types(self)
        check_path_text("model", self.model)
        check_path_text("model-config", self.model_config)
        if not isinstance(self.loras, tuple) or not all(isinstance(lora, LoraRef) for lora in self.loras):
            raise InputError(f"loras must be a tuple of LoraRef, got {shown(self.loras)}")
        if not isinstance(self.embeddings, tuple) or not all(isinstance(e, str) for e in self.embeddings):
            raise InputError(f"embedding must be a file or a list of files (FILE or FILE:WORD), got "
                             f"{shown(self.embeddings)}")
        from dreamcli.embeddings import check_ref

        for ref in self.embeddings:
            check_path_text("embedding", ref)
            check_ref(ref)
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(
                f"unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}"
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.quantize is not None and self.quantize not in QUANTIZES:
            raise InputError(f"unknown quantize {shown(self.quantize)}: use one of {', '.join(QUANTIZES)}")


def _normalize_memory(options: ModelOptions) -> None:
    """offload was a switch: true still means "model" (config files, presets, records), false "none".
    "auto" is stored as None, so that equal options compare equal."""
    offload = options.offload
    if isinstance(offload, bool):
        offload = "model" if offload else "none"
    elif offload is not None and offload not in OFFLOADS:
        raise InputError(f"unknown offload {shown(offload)}: use one of {', '.join(OFFLOADS)} (or true / false)")
    object.__setattr__(options, "offload", None if offload == "auto" else offload)
    if options.quantize == "auto":
        object.__setattr__(options, "quantize", None)


def check_model(model) -> None:
    """A request's model options must be a ModelOptions (a library caller may pass anything)."""
    if not isinstance(model, ModelOptions):
        raise InputError(f"model must be a ModelOptions, got {shown(model)}: build it with model_options_from()")


def check_control(request) -> None:
    """A request's ControlNets must be ControlUnits (a library caller may pass anything), kept as a tuple. Units
    given as plain data (JSON from a server's client) are refused: their pictures' paths are the client's."""
    control = request.control
    if not isinstance(control, tuple | list) or not all(isinstance(unit, ControlUnit) for unit in control):
        raise InputError(f"control must be a tuple of ControlUnit, got {shown(control)}")
    object.__setattr__(request, "control", tuple(control))


def check_steps_range(value: int, name: str = "steps") -> None:
    """At least one denoising step, and not absurdly many (no scheduler is trained on more)."""
    if value < 1:
        raise InputError(f"{name} {value} is too few: use 1 or more")
    if value > MAX_STEPS:
        raise InputError(f"{name} {value} is too many: use at most 1000 (Stable Diffusion's schedulers; 30 is usual)")


def check_num_images(value: int) -> None:
    """At least one image, and no more than a run can plan."""
    if value < 1:
        raise InputError(f"num-images {value} is too few: use 1 or more")
    if value > MAX_NUM_IMAGES:
        raise InputError(f"num-images {value} is too many: use at most {MAX_NUM_IMAGES} per prompt")


def check_batch_pixels(count: int, width: int, height: int, what: str, fix: str) -> None:
    """Refuse a batch whose pictures together pass the pixel limit: they are all in memory at once."""
    from dreamcli.limits import ENV_VAR, max_pixels

    limit, total = max_pixels(), count * width * height
    if total > limit:
        raise InputError(
            f"{what} holds {count} pictures of {width}x{height} = {total / 1e6:.1f} megapixels at once, over the "
            f"limit of {limit / 1e6:.1f}: {fix}, or raise ${ENV_VAR} if this machine has the memory"
        )


def check_upscaler_ref(ref: str, flag: str, others: str = "") -> None:
    """An upscaler's name or file must be one dream knows (nothing is loaded here)."""
    from dreamcli import upscalers

    if not ref:
        raise InputError(f"{flag} is empty: name an upscaler or a .pth / .safetensors file")
    if upscalers.is_file_ref(ref):
        check_path_text(flag, ref)
        return
    names = upscalers.available()
    if ref.lower() not in {name.lower() for name in names}:
        choices = ", ".join(filter(None, [others, *sorted(names)]))
        raise InputError(f"unknown {flag} {ref!r}: use {choices}, or a .pth / .safetensors file (files in "
                         f"{upscalers.named_folder()} are named by their file name)")


def check_size(name: str, value: int | None) -> None:
    """Width and height must be positive multiples of 8 (the VAE downsamples by 8)."""
    if value is None:
        return
    if value < 8:
        raise InputError(f"{name} {value} is too small: use a multiple of 8 of at least 8")
    if value % 8:
        lower = value - value % 8
        raise InputError(f"{name} {value} is not a multiple of 8: use {lower} or {lower + 8}")
    if value > MAX_SIDE:
        raise InputError(f"{name} {value} is larger than any model draws: use at most {MAX_SIDE}")


@dataclass(frozen=True)
class GenRequest:
    """Text to image: everything that determines the pictures, and nothing about output files."""

    prompt: str
    model: ModelOptions
    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    # Rescales the guided prediction towards the conditional one's spread (Lin et al. 2023, section 3.4):
    # 0 is plain CFG; 0.7 keeps zero-terminal-SNR / v-prediction models from washing out at high guidance.
    guidance_rescale: float = 0.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    num_images: int = 1
    seed: int | None = None  # None: a random base seed, drawn and recorded by the task
    # Hires fix (A1111's): draw at the size above, enlarge by hires_scale, then redraw that with img2img.
    hires_scale: float | None = None  # None (or 0, which turns a preset's hires off): no second pass
    hires_upscaler: str = "latent"  # "latent": the latents, bilinear (A1111's Latent); "lanczos": the picture;
    # else an upscaler's name or file (upscalers.py), run on the picture
    hires_strength: float = 0.5  # how much the second pass redraws (A1111's Denoising strength)
    hires_steps: int | None = None  # the second pass's steps before strength; None: the same as the first's
    control: tuple[ControlUnit, ...] = ()  # ControlNets steering the picture (several: a MultiControlNet)

    HIRES_UPSCALERS = ("latent", "lanczos")  # a class constant, not a field; any other value names a GAN upscaler

    def __post_init__(self):
        check_field_types(self)
        check_model(self.model)
        check_control(self)
        check_steps_range(self.num_inference_steps)
        self._check_hires()
        if self.guidance_scale < 0:
            raise InputError(f"guidance {self.guidance_scale:g} is negative: use 0 or more (7.5 is usual)")
        if not 0 <= self.guidance_rescale <= 1:
            raise InputError(f"guidance-rescale {self.guidance_rescale:g} is out of range: use 0 to 1 (0.7 is usual)")
        check_num_images(self.num_images)
        check_size("width", self.width)
        check_size("height", self.height)
        if self.width is not None and self.height is not None:
            from dreamcli.limits import check_pixels

            check_pixels(self.width, self.height, "the image")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - self.num_images:
            raise InputError(f"seed {self.seed} is out of range: use 0 to {MAX_SEED - self.num_images}")
        if self.hires_scale and self.width is not None and self.height is not None:
            from dreamcli.limits import check_pixels

            # The model's own size multiple rounds this at run time (tasks/hires.py checks that size again).
            sides = [max(8, round(side * self.hires_scale / 8) * 8) for side in (self.width, self.height)]
            if max(sides) > MAX_SIDE:
                raise InputError(f"--hires {self.hires_scale:g} makes a side of {max(sides)} px, more than any model "
                                 f"draws: use at most {MAX_SIDE} px a side")
            check_pixels(*sides, "the hires image")

    def _check_hires(self) -> None:
        """The hires settings, one line per bad value (they are checked even with hires off: a preset holds them)."""
        if self.hires_scale == 0:
            object.__setattr__(self, "hires_scale", None)
        if self.hires_scale is not None and not 1 <= self.hires_scale <= 8:
            raise InputError(f"hires {self.hires_scale:g} is out of range: use 1 to 8 (2 doubles each side; 0 is off)")
        upscaler = self.hires_upscaler.strip()
        if upscaler.lower() in self.HIRES_UPSCALERS:  # A1111 writes "Latent" and "Lanczos"
            upscaler = upscaler.lower()
        else:
            check_upscaler_ref(upscaler, "hires-upscaler", "latent, lanczos")
        object.__setattr__(self, "hires_upscaler", upscaler)
        if not 0 < self.hires_strength <= 1:
            raise InputError(f"hires-strength {self.hires_strength:g} is out of range: use more than 0 and at most 1 "
                             "(0.5 is usual)")
        if self.hires_steps is not None:
            check_steps_range(self.hires_steps, "hires-steps")
        steps = self.hires_steps or self.num_inference_steps
        if self.hires_scale and int(steps * self.hires_strength) < 1:
            raise InputError(f"hires-steps {steps} x hires-strength {self.hires_strength:g} is less than one "
                             "denoising step: raise --hires-steps or --hires-strength")

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
    "guidance_rescale": "guidance_rescale",
    "width": "width",
    "height": "height",
    "num_images": "num_images",
    "seed": "seed",
    "hires": "hires_scale",
    "hires_upscaler": "hires_upscaler",
    "hires_strength": "hires_strength",
    "hires_steps": "hires_steps",
}
MODEL_SETTINGS = tuple(f.name for f in fields(ModelOptions) if f.name not in ("loras", "embeddings")) + (
    "lora", "embedding")
_TYPES = {
    "steps": int, "num_images": int, "seed": int, "width": int, "height": int,
    "guidance": float, "guidance_rescale": float, "prompt": str, "negative": str,
    "hires": float, "hires_upscaler": str, "hires_strength": float, "hires_steps": int,
}


def coerce_setting(key: str, value, where: str):
    """Check the type of one request setting from a file, naming the file and key when it is wrong."""
    want = _TYPES.get(key)
    if want is None or value is None:
        return value
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, want):
        raise InputError(f"{where}: {key} must be {want.__name__}, got {shown(value)}")
    return value


def model_options_from(settings: dict) -> ModelOptions:
    """Build ModelOptions from merged settings (short names)."""
    loras = settings.get("lora") or ()
    if isinstance(loras, str | LoraRef):
        loras = (loras,)
    if not isinstance(loras, list | tuple) or not all(isinstance(lora, str | LoraRef) for lora in loras):
        raise InputError(f"lora must be a path or a list of paths (PATH or PATH:SCALE), got {shown(loras)}")
    embeddings = settings.get("embedding") or ()
    if isinstance(embeddings, str):
        embeddings = (embeddings,)
    if not isinstance(embeddings, list | tuple) or not all(isinstance(e, str) for e in embeddings):
        raise InputError(f"embedding must be a file or a list of files (FILE or FILE:WORD), got {shown(embeddings)}")
    return ModelOptions(
        model=settings.get("model") or "",
        model_config=settings.get("model_config"),
        scheduler=settings.get("scheduler"),
        loras=tuple(lora if isinstance(lora, LoraRef) else LoraRef.parse(lora) for lora in loras),
        embeddings=tuple(embeddings),
        device=settings.get("device") or "auto",
        dtype=settings.get("dtype") or "auto",
        offload=settings.get("offload"),
        quantize=settings.get("quantize"),
        no_t5=_switch(settings, "no_t5"),
        vae_tiling=_switch(settings, "vae_tiling"),
        attention_slicing=_switch(settings, "attention_slicing"),
        allow_unsafe_pickle=_switch(settings, "allow_unsafe_pickle"),
        compile=_switch(settings, "compile"),
        channels_last=_switch(settings, "channels_last", None),
        fuse_qkv=_switch(settings, "fuse_qkv", None),
    )


def _switch(settings: dict, key: str, unset: bool | None = False) -> bool | None:
    # bool("no") is True: a switch from a file must really be true or false. Unset is off, or None
    # (for channels_last and fuse_qkv) so that the engine decides by device.
    value = settings.get(key)
    if value is None:
        return unset
    check_value_type(key.replace("_", "-"), value, "bool")
    return value


def batch_size_from(settings: dict) -> int:
    """The number of images per UNet call (`--batch-size`, a preset or config `batch_size`), checked."""
    value = settings.get("batch_size")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"batch-size must be a whole number, got {value!r}: use 1 or more")
    if value < 1:
        raise InputError(f"batch-size {value} is too small: use 1 or more (1 makes one image per call)")
    return value


def gen_request_from(settings: dict, model: ModelOptions | None = None) -> GenRequest:
    """Build a GenRequest from merged settings (short names), validating every value."""
    if settings.get("prompt") is None:
        raise InputError("no prompt: give one or more prompts, or --prompts FILE (- for stdin)")
    kwargs = {
        field_name: settings[key]
        for key, field_name in SETTING_TO_FIELD.items()
        if settings.get(key) is not None
    }
    return GenRequest(model=model or model_options_from(settings), control=control_units_from(settings), **kwargs)


MIXED_PRECISIONS = ("no", "fp16", "bf16")
TUNE_QUANTIZES = ("none", "fp8")
EXPORT_FORMATS = ("kohya",)
LORA_LAYERS = ("attention", "all")
TIMESTEP_DENSITIES = ("logit_normal", "mode", "cosmap", "uniform")  # flow-matching families (SD3, Flux)


@dataclass(frozen=True)
class TuneConfig:
    """DreamBooth-LoRA training: what to learn, from which model, how, and where to write it.

    Field names follow diffusers' train_dreambooth_lora.py arguments. Prompts left empty become
    `a photo of {token} {class_word}` and `a photo of {class_word}`.
    """

    instance_data_dir: str
    class_word: str
    model: str
    output_dir: str
    token: str = "sks"
    model_config: str | None = None
    allow_unsafe_pickle: bool = False
    device: str = "auto"
    instance_prompt: str = ""
    class_prompt: str = ""
    max_train_steps: int = 400
    learning_rate: float = 1e-4
    rank: int = 4
    lora_alpha: float | None = None  # None: equal to rank, so the LoRA scale alpha/rank is 1
    lora_layers: str = "attention"  # "all": also the convolutions and feed-forwards (learns new shapes)
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    resolution: int | None = None  # None: the model's native size
    random_crop: bool = False  # random crop + horizontal flip instead of a centre crop
    with_prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_data_dir: str | None = None
    train_text_encoder: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    quantize: str = "none"  # "fp8": the denoiser's frozen weights stored in fp8 (QLoRA style); adapters stay fp32
    offload: bool = False  # VAE and frozen text encoders in CPU memory except while they run
    checkpointing_steps: int = 100
    resume: bool = False
    overwrite: bool = False
    validation_prompt: str = ""  # empty: the instance prompt
    validation_steps: int = 0  # 0: validation images only at the end
    num_validation_images: int = 2
    class_steps: int = 30  # denoising steps for class images
    class_guidance: float = 7.5
    seed: int = 0
    export: tuple[str, ...] = ()
    timestep_density: str = "logit_normal"  # SD3/Flux: how training timesteps are drawn (the SD3 paper's choices)

    def __post_init__(self):
        check_field_types(self)
        for name in ("instance_data_dir", "model", "model_config", "output_dir", "class_data_dir"):
            check_path_text(label(name), getattr(self, name))
        if not isinstance(self.export, tuple) or not all(isinstance(fmt, str) for fmt in self.export):
            raise InputError(f"export must be a list of format names (kohya), got {shown(self.export)}")
        if not self.instance_data_dir:
            raise InputError("no instance images: pass --images DIR (a folder of 3-20 photos of the subject)")
        if not self.class_word.strip():
            raise InputError("no class word: pass --class WORD (what the subject is, e.g. dog)")
        if not self.token.strip() or any(ch.isspace() for ch in self.token):
            raise InputError(f"token {self.token!r} must be one word without spaces (sks is usual)")
        if not self.model:
            raise InputError("no model given: pass -m/--model or --preset")
        if not self.output_dir:
            raise InputError("no output folder: pass -o/--outdir")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        for name, value in (("steps", self.max_train_steps), ("batch-size", self.train_batch_size),
                            ("grad-accum", self.gradient_accumulation_steps),
                            ("checkpoint-every", self.checkpointing_steps)):
            if value < 1:
                raise InputError(f"{name} {value} is too small: use 1 or more")
        if self.rank < 1:
            raise InputError(f"rank {self.rank} is too small: use 1 or more (4-32 is usual)")
        if self.rank > MAX_RANK:
            raise InputError(f"rank {self.rank} is more than any layer is wide: use {MAX_RANK} or less (4-32 is usual)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise InputError(f"alpha {self.lora_alpha:g} must be positive (the rank is usual)")
        if not self.learning_rate > 0:
            raise InputError(f"lr {self.learning_rate:g} must be positive (1e-4 is usual for LoRA)")
        if self.prior_loss_weight < 0:
            raise InputError(f"prior-weight {self.prior_loss_weight:g} is negative: use 0 or more (1 is usual)")
        if self.with_prior_preservation and self.num_class_images < 1:
            raise InputError(f"class-images {self.num_class_images} is too few: use 1 or more, or --no-prior")
        if self.validation_steps < 0:
            raise InputError(f"validation-every {self.validation_steps} is negative: use 0 (only at the end) or more")
        if self.num_validation_images < 0:
            raise InputError(f"validation-images {self.num_validation_images} is negative: use 0 or more")
        check_steps_range(self.class_steps, "steps for class images")
        if self.class_guidance < 0:
            raise InputError(f"guidance {self.class_guidance:g} for class images is negative: use 0 or more")
        check_size("resolution", self.resolution)
        if self.resolution is not None:
            from dreamcli.limits import check_pixels

            # One step holds the instance and class pictures of a batch at once.
            per_step = self.train_batch_size * (2 if self.with_prior_preservation else 1)
            check_pixels(self.resolution, self.resolution, f"resolution {self.resolution}")
            check_batch_pixels(per_step, self.resolution, self.resolution, "one training step",
                               "lower --batch-size or --resolution")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise InputError(
                f"unknown mixed precision {self.mixed_precision!r}: use one of {', '.join(MIXED_PRECISIONS)}"
            )
        if self.quantize in ("nf4", "int8"):
            raise InputError(
                f"--quantize {self.quantize} is not supported by dream tune yet: use --quantize fp8 (base weights in "
                "fp8, adapters in fp32)"
            )
        if self.quantize not in TUNE_QUANTIZES:
            raise InputError(f"unknown quantize {shown(self.quantize)}: use {' or '.join(TUNE_QUANTIZES)}")
        if self.quantize == "fp8" and self.mixed_precision == "no":
            raise InputError(
                "--quantize fp8 needs --mixed-precision bf16 or fp16: the fp8 weights are cast up to it as each "
                "layer runs"
            )
        if self.timestep_density not in TIMESTEP_DENSITIES:
            raise InputError(
                f"unknown timestep density {self.timestep_density!r}: use {', '.join(TIMESTEP_DENSITIES)}"
            )
        if self.lora_layers not in LORA_LAYERS:
            raise InputError(f"unknown layers {self.lora_layers!r}: use {' or '.join(LORA_LAYERS)}")
        for fmt in self.export:
            if fmt not in EXPORT_FORMATS:
                raise InputError(f"unknown export format {fmt!r}: use {', '.join(EXPORT_FORMATS)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed {self.seed} is out of range: use 0 to {MAX_SEED}")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite contradict each other: pass one of them")

    @property
    def instance_text(self) -> str:
        """The prompt the instance images are trained with."""
        return self.instance_prompt or f"a photo of {self.token} {self.class_word}"

    @property
    def class_text(self) -> str:
        """The prompt class images are generated and trained with."""
        return self.class_prompt or f"a photo of {self.class_word}"

    @property
    def alpha(self) -> float:
        """LoRA alpha (scale = alpha / rank)."""
        return float(self.rank if self.lora_alpha is None else self.lora_alpha)

    def to_dict(self) -> dict:
        """Plain JSON-ready fields, with the prompts as they are used."""
        data = asdict(self)
        data["export"] = list(self.export)
        data["instance_prompt"], data["class_prompt"] = self.instance_text, self.class_text
        data["lora_alpha"] = self.alpha
        return data


# ---- image to image (inpaint, outpaint, colorize, upscale) ----

UPSCALE_FACTORS = (2, 4)  # the SD paths (x4 upscaler, tiled redraw over Lanczos)
GAN_MAX_SCALE = 8  # with an upscaler model: any whole factor up to this (a 2x model runs as often as needed)


def _check_shared(request) -> None:
    """Checks every image request shares with GenRequest (same flags, same messages)."""
    check_field_types(request)
    check_model(request.model)
    if request.image is None or (isinstance(request.image, str) and not request.image):
        raise InputError("no image: give the picture to work on as the first argument")
    check_path_text("image", request.image)
    check_steps_range(request.num_inference_steps)
    if request.guidance_scale < 0:
        raise InputError(f"guidance {request.guidance_scale:g} is negative: use 0 or more (7.5 is usual)")
    check_num_images(request.num_images)
    if not 0 < request.strength <= 1:
        raise InputError(f"strength {request.strength:g} is out of range: use more than 0 and at most 1")
    if int(request.num_inference_steps * request.strength) < 1:
        # diffusers runs steps x strength denoising steps: fewer than one would return the input.
        raise InputError(
            f"steps {request.num_inference_steps} x strength {request.strength:g} is less than one denoising "
            "step: raise --steps or --strength"
        )
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED - request.num_images:
        raise InputError(f"seed {request.seed} is out of range: use 0 to {MAX_SEED - request.num_images}")


def check_work_size(request) -> None:
    """Width and height the model works at: multiples of 8 and, when both are given, within the pixel limit."""
    check_size("width", request.width)
    check_size("height", request.height)
    if request.width is not None and request.height is not None:
        from dreamcli.limits import check_pixels

        check_pixels(request.width, request.height, "the working size")


def _check_max_pixels(request) -> None:
    if request.max_pixels is not None and request.max_pixels < 64:
        raise InputError(f"max-pixels {request.max_pixels} is too small: use at least 64 (8x8)")


@dataclass(frozen=True, kw_only=True)
class ImageRequestBase:
    """Fields every image-to-image request shares with GenRequest (keyword-only, same defaults)."""

    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    num_images: int = 1
    seed: int | None = None  # None: a random base seed, drawn and recorded by the task

    def uses_model(self) -> bool:
        """Whether a diffusion model runs (not for an upscaler model alone)."""
        return True

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (what the image metadata stores); an in-memory picture is named as such."""
        data = asdict(self)
        data["model"]["loras"] = [str(LoraRef(**lora)) for lora in data["model"]["loras"]]
        for key in ("image", "mask"):
            if key in data and not isinstance(data[key], str):
                data[key] = "<in-memory image>"
        return data


@dataclass(frozen=True)
class InpaintRequest(ImageRequestBase):
    """Repaint the masked part of a picture; `image` and `mask` are paths or PIL images."""

    image: object
    mask: object
    prompt: str
    model: ModelOptions
    strength: float = 1.0  # 1: the masked area is drawn from pure noise
    mask_blur: float = 4.0  # pixels of feathering around the mask's edge
    invert_mask: bool = False
    width: int | None = None  # the size the model works at; None: the picture's shape at the model's area
    height: int | None = None
    control: tuple[ControlUnit, ...] = ()  # ControlNets steering the repainting

    def __post_init__(self):
        _check_shared(self)
        check_control(self)
        if self.mask is None or (isinstance(self.mask, str) and not self.mask):
            raise InputError("no mask: pass --mask MASK (white or opaque marks the area to repaint)")
        check_path_text("mask", self.mask)
        if self.mask_blur < 0:
            raise InputError(f"mask-blur {self.mask_blur:g} is negative: use 0 (hard edge) or more")
        if self.mask_blur > MAX_MASK_BLUR:
            raise InputError(
                f"mask-blur {self.mask_blur:g} is wider than any picture: use at most {MAX_MASK_BLUR:g} (4 is usual)"
            )
        check_work_size(self)


@dataclass(frozen=True)
class OutpaintRequest(ImageRequestBase):
    """Extend a picture beyond its borders by the given margins (pixels, rounded up to 8)."""

    image: object
    prompt: str
    model: ModelOptions
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    # Below 1 so that the stretched-edge pre-fill still guides the new area's colours.
    strength: float = 0.85
    max_pixels: int | None = None  # None: limits.max_pixels()

    def __post_init__(self):
        _check_shared(self)
        _check_max_pixels(self)
        from dreamcli.imageops.canvas import Margins

        Margins.checked(self.left, self.right, self.top, self.bottom)


@dataclass(frozen=True)
class ColorizeRequest(ImageRequestBase):
    """Colour a grey or sepia picture: chroma from the model, luma kept from the input."""

    image: object
    model: ModelOptions
    prompt: str = ""
    color_prompt: str = "a colorful photo"  # what asks the model for colour; the user's prompt comes first
    strength: float = 0.75  # enough to repaint colour, little enough to keep the shapes
    controlnet: str | None = None  # a ControlNet (folder or repo id) fed the grey picture, when the preset names one
    controlnet_conditioning_scale: float = 1.0
    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        _check_shared(self)
        check_work_size(self)

    @property
    def full_prompt(self) -> str:
        """The prompt the model gets: the user's words, then the colour request."""
        return ", ".join(p for p in (self.prompt.strip(), self.color_prompt.strip()) if p)


@dataclass(frozen=True)
class Img2ImgRequest(ImageRequestBase):
    """Redraw a picture from a prompt (A1111's img2img): `strength` 0 keeps it, 1 redraws it from noise."""

    image: object
    model: ModelOptions
    prompt: str = ""
    strength: float = 0.75  # A1111's default denoising strength
    width: int | None = None  # the size the model draws (and the output); None: the picture's shape at the model's area
    height: int | None = None
    control: tuple[ControlUnit, ...] = ()  # ControlNets steering the redraw

    def __post_init__(self):
        _check_shared(self)
        check_control(self)
        check_work_size(self)

    @property
    def denoising_steps(self) -> int:
        """The steps diffusers runs: the last steps x strength of the schedule (its get_timesteps)."""
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


@dataclass(frozen=True)
class RestoreRequest(ImageRequestBase):
    """Remove JPEG artefacts: the model proposes a clean picture, which is then moved back into the set of
    pictures the JPEG file allows (its own quantised coefficients)."""

    image: object
    model: ModelOptions
    prompt: str = ""
    # Low: one denoising step near the clean end of the schedule. On 32 demo-world pictures at JPEG quality 10
    # (benchmarks/restore.py) strength 0.02 / 0.05 / 0.1 / 0.2 gained +1.46 / +1.40 / +1.27 / +0.97 dB over the
    # JPEG; 0.05 needs no longer schedule than the presets' 20-30 steps. Real checkpoints' VAEs reproduce JPEG
    # blocks more faithfully than the demo model's, so they may want more.
    strength: float = 0.05
    controlnet: str | None = None  # a tile ControlNet (folder or repo id) fed the picture, when the preset names one
    controlnet_conditioning_scale: float = 1.0

    def __post_init__(self):
        check_field_types(self)
        if 1 / MAX_STEPS <= self.strength <= 1 and 1 <= self.num_inference_steps and self.denoising_steps < 1:
            # Restoring needs one step at a low noise level, whatever schedule length the preset has (turbo
            # presets have 1-4 steps): the schedule is made long enough for one step at `strength`.
            steps = math.ceil(1 / self.strength)
            while int(steps * self.strength) < 1:
                steps += 1
            object.__setattr__(self, "num_inference_steps", steps)
        _check_shared(self)

    @property
    def denoising_steps(self) -> int:
        """The steps diffusers runs: the last steps x strength of the schedule."""
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)


@dataclass(frozen=True)
class UpscaleRequest(ImageRequestBase):
    """Enlarge a picture 2x or 4x, adding detail with the model."""

    image: object
    model: ModelOptions
    prompt: str = ""
    scale: int = 4
    strength: float = 0.3  # tiled path: low, so tiles add detail without inventing new objects
    tile: int | None = None  # tiled path: tile side in pixels; None: the model's native size
    overlap: int | None = None  # tiled path: pixels neighbouring tiles share; None: a quarter tile
    noise_level: int = 20  # x4 upscaler only: noise added to the low-res input (diffusers' default)
    max_pixels: int | None = None  # None: limits.max_pixels()
    upscaler: str | None = None  # a GAN/transformer upscaler's name or file (upscalers.py); None: Lanczos
    redraw: bool = True  # False: the upscaler alone, no diffusion model (A1111's Extras tab)

    def __post_init__(self):
        _check_shared(self)
        _check_max_pixels(self)
        if self.upscaler is not None:
            check_upscaler_ref(self.upscaler, "upscaler")
            if not 1 <= self.scale <= GAN_MAX_SCALE:
                raise InputError(f"scale {self.scale} is not supported: use --scale 1 to {GAN_MAX_SCALE} "
                                 "with --upscaler")
            if not self.redraw and self.num_images > 1:
                raise InputError(f"an upscaler alone gives the same picture every time: leave out -n "
                                 f"{self.num_images}, or add --strength to redraw it with the model")
        elif not self.redraw:
            raise InputError("nothing would enlarge the picture: name an --upscaler, or let the model redraw it")
        elif self.scale not in UPSCALE_FACTORS:
            raise InputError(f"scale {self.scale} is not supported: use --scale 2 or --scale 4 (other factors "
                             "need an --upscaler)")
        if self.redraw and self.scale == 1:
            raise InputError("scale 1 with a redraw changes nothing the model adds detail to: use dream img2img, "
                             "or --scale 1 with an --upscaler alone (no --strength)")
        check_size("tile", self.tile)
        if self.tile is not None:
            from dreamcli.limits import check_pixels

            check_pixels(self.tile, self.tile, f"tile {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"overlap {self.overlap} is negative: use 0 or more (a quarter tile is usual)")
        if self.overlap is not None and self.tile is not None and self.overlap >= self.tile:
            raise InputError(f"overlap {self.overlap} must be less than the tile size {self.tile}: lower --overlap")
        if not 0 <= self.noise_level <= 350:
            raise InputError(f"noise-level {self.noise_level} is out of range: use 0 to 350 (20 is usual)")

    def uses_model(self) -> bool:
        """An upscaler model alone runs no diffusion model."""
        return self.redraw
