"""Validated request dataclasses: one per task, field names as in diffusers' `__call__`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

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
    compile: bool = False  # torch.compile the UNet (regional); the first call pays the warm-up
    channels_last: bool | None = None  # None: on for CUDA, off elsewhere (no gain measured on CPU)
    fuse_qkv: bool | None = None  # None: on for CUDA while no LoRA is active

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
    # Rescales the guided prediction towards the conditional one's spread (Lin et al. 2023, section 3.4):
    # 0 is plain CFG; 0.7 keeps zero-terminal-SNR / v-prediction models from washing out at high guidance.
    guidance_rescale: float = 0.0
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
        if not 0 <= self.guidance_rescale <= 1:
            raise InputError(f"guidance-rescale {self.guidance_rescale:g} is out of range: use 0 to 1 (0.7 is usual)")
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
    "guidance_rescale": "guidance_rescale",
    "width": "width",
    "height": "height",
    "num_images": "num_images",
    "seed": "seed",
}
MODEL_SETTINGS = tuple(f.name for f in fields(ModelOptions) if f.name != "loras") + ("lora",)
_TYPES = {
    "steps": int, "num_images": int, "seed": int, "width": int, "height": int,
    "guidance": float, "guidance_rescale": float, "prompt": str, "negative": str,
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
        compile=bool(settings.get("compile")),
        channels_last=_tristate(settings.get("channels_last")),
        fuse_qkv=_tristate(settings.get("fuse_qkv")),
    )


def _tristate(value) -> bool | None:
    # None keeps "auto" (the engine decides by device); anything else is the user's explicit choice.
    return None if value is None else bool(value)


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
    kwargs = {
        field_name: settings[key]
        for key, field_name in SETTING_TO_FIELD.items()
        if settings.get(key) is not None
    }
    return GenRequest(model=model or model_options_from(settings), **kwargs)


MIXED_PRECISIONS = ("no", "fp16", "bf16")
EXPORT_FORMATS = ("kohya",)
LORA_LAYERS = ("attention", "all")


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

    def __post_init__(self):
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
        if self.class_steps < 1:
            raise InputError(f"class-steps {self.class_steps} is too few: use 1 or more")
        check_size("resolution", self.resolution)
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise InputError(
                f"unknown mixed precision {self.mixed_precision!r}: use one of {', '.join(MIXED_PRECISIONS)}"
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

# The largest output the image tasks write unless --max-pixels says otherwise: 4096 x 4096.
MAX_PIXELS = 4096 * 4096
UPSCALE_FACTORS = (2, 4)


def _check_shared(request) -> None:
    """Checks every image request shares with GenRequest (same flags, same messages)."""
    if not isinstance(request.prompt, str):
        raise InputError(f"prompt must be text, got {request.prompt!r}")
    if request.image is None or request.image == "":
        raise InputError("no image: give the picture to work on as the first argument")
    if request.num_inference_steps < 1:
        raise InputError(f"steps {request.num_inference_steps} is too few: use 1 or more")
    if request.guidance_scale < 0:
        raise InputError(f"guidance {request.guidance_scale:g} is negative: use 0 or more (7.5 is usual)")
    if request.num_images < 1:
        raise InputError(f"num-images {request.num_images} is too few: use 1 or more")
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


def _check_max_pixels(request) -> None:
    if request.max_pixels < 64:
        raise InputError(f"max-pixels {request.max_pixels} is too small: use at least 64 (8x8)")


@dataclass(frozen=True, kw_only=True)
class ImageRequestBase:
    """Fields every image-to-image request shares with GenRequest (keyword-only, same defaults)."""

    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    num_images: int = 1
    seed: int | None = None  # None: a random base seed, drawn and recorded by the task

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

    def __post_init__(self):
        _check_shared(self)
        if self.mask is None or self.mask == "":
            raise InputError("no mask: pass --mask MASK (white or opaque marks the area to repaint)")
        if self.mask_blur < 0:
            raise InputError(f"mask-blur {self.mask_blur:g} is negative: use 0 (hard edge) or more")
        check_size("width", self.width)
        check_size("height", self.height)


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
    max_pixels: int = MAX_PIXELS

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
        check_size("width", self.width)
        check_size("height", self.height)

    @property
    def full_prompt(self) -> str:
        """The prompt the model gets: the user's words, then the colour request."""
        return ", ".join(p for p in (self.prompt.strip(), self.color_prompt.strip()) if p)


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
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        _check_shared(self)
        _check_max_pixels(self)
        if self.scale not in UPSCALE_FACTORS:
            raise InputError(f"scale {self.scale} is not supported: use --scale 2 or --scale 4")
        check_size("tile", self.tile)
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"overlap {self.overlap} is negative: use 0 or more (a quarter tile is usual)")
        if self.overlap is not None and self.tile is not None and self.overlap >= self.tile:
            raise InputError(f"overlap {self.overlap} must be less than the tile size {self.tile}: lower --overlap")
        if not 0 <= self.noise_level <= 350:
            raise InputError(f"noise-level {self.noise_level} is out of range: use 0 to 350 (20 is usual)")
