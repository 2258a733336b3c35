"""What `dream bench` measures: checked settings, with defaults per device and for --quick."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from dreamcli.bench.shapes import ALL_SHAPES, SHAPES
from dreamcli.errors import InputError
from dreamcli.requests import ModelOptions

# Full-size shapes are the point on a GPU; on a CPU one SD1.5 step takes seconds, so they run only when asked.
# sd35-medium and flux-dev run only when named: their bf16 folders take about 8 and 25 GB of disk.
GPU_DEFAULTS = {"shapes": ("demo", "sd15", "sd21", "sdxl"), "steps": 20, "warmup_steps": 2, "batch_sizes": (1, 8),
                "compile": True, "offload": True, "fp8": True, "loop_prompts": 10, "runs": 3, "cli_steps": None}
CPU_DEFAULTS = {"shapes": ("demo", "tiny-sd", "tiny-sdxl"), "steps": 5, "warmup_steps": 1, "batch_sizes": (1, 8),
                "compile": False, "offload": False, "fp8": False, "loop_prompts": 10, "runs": 3, "cli_steps": None}
# --quick: what CI runs, under 2 minutes on two shared CPU cores (start-up of each `dream` dominates).
QUICK_DEFAULTS = {"shapes": ("tiny-sd", "demo"), "steps": 3, "warmup_steps": 1, "batch_sizes": (1, 2),
                  "compile": False, "offload": False, "fp8": False, "loop_prompts": 3, "runs": 1, "cli_steps": 2}


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of one benchmark run; None means the device's default (or --quick's)."""

    device: str = "auto"
    dtype: str = "auto"
    shapes: tuple[str, ...] | None = None
    steps: int | None = None  # denoising steps per timed run; the first is not timed
    warmup_steps: int | None = None  # an untimed run of this many steps before each timed one
    batch_sizes: tuple[int, ...] | None = None
    compile: bool | None = None  # also time dreamcli with --compile
    offload: bool | None = None  # also time dreamcli with --offload (batch 1)
    fp8: bool | None = None  # also time both paths with the transformer's weights stored in fp8
    cli: bool = True  # wall times of `dream` commands (CPU)
    loop_prompts: int | None = None  # prompts in the shell loop vs --prompts comparison
    runs: int | None = None  # repeats of each short command (the median counts)
    cli_steps: int | None = None  # steps of the demo `dream gen` commands; None: the demo preset's
    prompt: str = "a red circle on a blue background"
    guidance_scale: float = 7.5  # above 1: classifier-free guidance doubles the UNet batch, as users run it
    quick: bool = False

    def __post_init__(self):
        ModelOptions(model="bench", device=self.device, dtype=self.dtype)  # same checks, same messages
        for name in self.shapes or ():
            if name not in ALL_SHAPES:
                raise InputError(f"unknown shape {name!r}: use any of {', '.join(ALL_SHAPES)} (comma-separated)")
        if self.steps is not None and self.steps < 2:
            raise InputError(f"steps {self.steps} is too few: use 2 or more (the first step is not timed)")
        for name, value in (("warmup", self.warmup_steps), ("cli-steps", self.cli_steps)):
            if value is not None and value < 0:
                raise InputError(f"{name} {value} is negative: use 0 or more")
        for size in self.batch_sizes or ():
            if size < 1:
                raise InputError(f"batch size {size} is too small: use 1 or more (e.g. --batch-sizes 1,8)")
        for name, value in (("loop-prompts", self.loop_prompts), ("runs", self.runs)):
            if value is not None and value < 1:
                raise InputError(f"{name} {value} is too small: use 1 or more")
        if self.guidance_scale < 0:
            raise InputError(f"guidance {self.guidance_scale:g} is negative: use 0 or more (7.5 is usual)")

    def resolved(self, device: str, dtype: str) -> BenchConfig:
        """A copy with the device and dtype picked and every None replaced by its default."""
        defaults = QUICK_DEFAULTS if self.quick else GPU_DEFAULTS if device.startswith("cuda") else CPU_DEFAULTS
        chosen = {key: value for key, value in defaults.items() if getattr(self, key) is None}
        return replace(self, device=device, dtype=dtype, **chosen)

    def to_dict(self) -> dict:
        """Every setting, JSON-ready."""
        data = asdict(self)
        for f in fields(self):
            if isinstance(data[f.name], tuple):
                data[f.name] = list(data[f.name])
        return data


def parse_shapes(text: str) -> tuple[str, ...]:
    """`demo,sd15` -> ("demo", "sd15"); `none` -> () (only the command-line figures)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if names == ("none",):
        return ()
    if not names:
        raise InputError(f"no shapes in {text!r}: use a comma-separated list of {', '.join(ALL_SHAPES)}, or none")
    return names


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """`1,8` -> (1, 8)."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"batch sizes {text!r} are not whole numbers: use e.g. --batch-sizes 1,8") from None
    if not sizes:
        raise InputError(f"no batch sizes in {text!r}: use e.g. --batch-sizes 1,8")
    return tuple(dict.fromkeys(sizes))  # in order, each once


def is_full_size(name: str) -> bool:
    """True for the shapes with real-model sizes (sd15, sd21, sdxl, sd35-medium, flux-dev)."""
    return name in SHAPES and SHAPES[name].full_size


def shape_dtype(name: str, device: str, dtype: str) -> str:
    """The dtype a shape runs in: the run's, except fp16 on a GPU for shapes published in bf16 (SD3.5, Flux)."""
    half = SHAPES[name].half if name in SHAPES else None
    return half if half and dtype == "fp16" and device.startswith("cuda") else dtype
