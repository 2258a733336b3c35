"""The model families dream runs, as plain data: one module per family, looked up here.

Code elsewhere asks a family (recognise it, its pipeline per task, its denoiser, how its latents decode,
its call arguments, schedulers, LoRA loading, tuning) instead of branching on names. Kept free of torch
and diffusers imports at module level, so that recognising a model costs no import time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from dreamcli.errors import InputError

TASKS = ("text2img", "img2img", "inpaint", "control-text2img", "control-img2img", "control-inpaint",
         "control-union-text2img", "control-union-img2img", "control-union-inpaint")
COMMANDS = {"text2img": "gen", "img2img": "img2img, colorize and upscale", "inpaint": "inpaint and outpaint",
            "control-text2img": "gen --control", "control-img2img": "img2img --control",
            "control-inpaint": "inpaint --control", "control-union-text2img": "gen --control with a Union model",
            "control-union-img2img": "img2img --control with a Union model",
            "control-union-inpaint": "inpaint --control with a Union model"}
CONTROL = "control-"  # a task's ControlNet pipeline is `pipelines["control-" + task]`


class UnsupportedModel(InputError):
    """A model dream recognises but cannot run (a video pipeline, a ControlNet given as -m, ...)."""


def no_call_args(pipe, kwargs: dict) -> dict:
    """Most families need nothing beyond the arguments every pipeline shares."""
    return {}


def standard_progress(counter, steps: int) -> dict:
    """diffusers' per-step callback (the counter reads the pipeline's own step count)."""
    return {"callback_on_step_end": counter}


def legacy_progress(counter, steps: int) -> dict:
    """Pipelines with only the old `callback(step, timestep, latents)` argument (PixArt, unCLIP): it passes no
    pipeline to read the step count from, so the steps asked for are the count."""
    counter.steps_per_call = steps
    return {"callback": lambda step, timestep, latents: counter(None, step, timestep, {}), "callback_steps": 1}


@dataclass(frozen=True)
class Family:
    """What one model family needs; see the module docstring. Functions are the family module's own."""

    name: str  # what records and presets say: "sd1", "flux"
    label: str  # what users read: "Flux.1"
    index_classes: frozenset[str]  # model_index.json `_class_name`s of its diffusers folders
    pipelines: dict[str, str]  # task -> diffusers pipeline class; a task absent here is refused ("control-" + task:
    # the ControlNet pipeline for it)
    config_repos: dict[str, str]  # variant -> hub repo whose configs complete a single file ("" is the default)
    native_size: int  # pixels per side it was trained at, where its configs do not say
    denoiser: str = "unet"  # the pipeline attribute holding the denoiser ("unet" | "transformer")
    denoiser_class: str = "UNet2DConditionModel"  # its diffusers class (single files of it load alone)
    whole_file: Callable[[dict], bool] = lambda keys: True  # tensor names -> the file has the text encoders too
    autoencoder: str = "vae"  # the attribute holding the latent decoder ("vae" | "movq")
    schedulers: str = "discrete"  # which samplers fit: "discrete" (DDPM-trained) | "flow" (flow matching)
    skips_input_scaling: bool = False  # its pipelines never call scale_model_input (Euler-type samplers break)
    lora: str = "pipeline"  # "pipeline": diffusers' load_lora_weights; "peft": an adapter on the denoiser
    lora_kind: str | None = None  # which LORA_KINDS entry fits it (None: its LoRAs cannot be told by name)
    single_file: bool = True  # diffusers can build it from one checkpoint file
    claims_folder: Callable[[dict, Path], bool] | None = None  # (model_index, folder) -> is it ours
    claims_keys: Callable[[dict], bool] | None = None  # single-file tensor names -> is it ours
    variant: Callable[[dict], str] | None = None  # single-file tensor names -> a config_repos key
    call_args: Callable[[object, dict], dict] = no_call_args  # (pipe, call arguments) -> what this family changes
    decode: Callable[..., object] | None = None  # (pipe, autoencoder, latents, width, height) -> pixels in [-1, 1]
    native: Callable[[object], int] | None = None  # loaded pipeline -> side in pixels it draws best at
    size_multiple: Callable[[object], int] | None = None  # loaded pipeline -> what image sides must divide by
    max_side: Callable[[object], int | None] = lambda pipe: None  # loaded pipeline -> the longest side it draws
    progress: Callable[[object, int], dict] = standard_progress  # (StepCounter, steps) -> callback arguments
    single_file_kwargs: dict = field(default_factory=dict)  # what from_single_file needs besides config
    guidance: Callable[[object], str] = lambda pipe: "cfg"  # pipeline -> "cfg" | "distilled" | "none"
    task_problem: Callable[[str, object], str | None] | None = None  # (task, pipe) -> why this model cannot
    t5_optional: bool = False  # its pipeline runs with the T5 encoder left out (--no-t5)
    running: Callable[[object], AbstractContextManager] = lambda pipe: nullcontext()  # pipe -> what a call runs in
    upcast_vae: bool = False  # its pipelines decode in fp32 when the VAE config asks (force_upcast): SDXL's do
    # How A1111 prompt weights are honoured (tasks/prompt_weights.py): "clip" (one CLIP encoder), "clip-pair"
    # (SDXL's two) or "text" (T5 and other encoders that read text: the syntax is taken out)
    prompt_encoding: str = "text"
    # Its ControlNet classes (single and several at once), where pipelines has control tasks
    controlnet_classes: tuple[str, str] = ("ControlNetModel", "MultiControlNetModel")

    def pipeline_class(self, task: str) -> str:
        """The diffusers class for a task, or a one-line refusal naming the family and the command."""
        cls = self.pipelines.get(task)
        if cls is None:
            able = [BY_NAME[name].label for name in DISPLAY_ORDER if task in BY_NAME[name].pipelines]
            raise UnsupportedModel(
                f"{self.label} models have no {task} pipeline in diffusers, so dream's {COMMANDS[task]} cannot run "
                f"on them: use a model of {', '.join(able[:-1])} or {able[-1]}"
            )
        return cls

    def check_task(self, task: str, pipe) -> None:
        """Refuse a task this particular model cannot do (e.g. Kandinsky inpainting needs its inpaint decoder)."""
        problem = self.task_problem(task, pipe) if self.task_problem else None
        if problem:
            raise UnsupportedModel(problem)

    def config_repo(self, keys: dict | None = None) -> str:
        """The hub repo whose configs complete a single file (the variant the tensor names say)."""
        variant = self.variant(keys) if self.variant and keys is not None else ""
        return self.config_repos.get(variant) or self.config_repos[""]


def get(name: str) -> Family:
    """The family of this name (as records and ModelSource store it)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise InputError(f"unknown model family {name!r}: dream knows {', '.join(BY_NAME)}") from None


def supported() -> str:
    """The families dream runs, for error messages."""
    labels = [BY_NAME[name].label for name in DISPLAY_ORDER]
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def label(name: str | None) -> str:
    """A family's display name ("SD 1.x"), or the name itself for one outside the registry."""
    return BY_NAME[name].label if name in BY_NAME else str(name)


def read_json(path: Path) -> dict:
    """A config file's contents ({} when it is missing or unreadable: the caller says what is wrong)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def for_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from model_index.json and component configs (no weights read)."""
    index = read_json(folder / "model_index.json")
    for family in FAMILIES:
        if family.claims_folder(index, folder):
            return family
    raise UnsupportedModel(describe_unsupported(index.get("_class_name"), folder.name))


def for_pipeline(pipe) -> Family:
    """The family of a loaded pipeline (a hub download, whose folder we did not read first)."""
    name = type(pipe).__name__
    for family in FAMILIES:
        if name in family.index_classes or name in family.pipelines.values():
            if family.name in ("sd1", "sd2"):
                cross = getattr(getattr(pipe, "unet", None), "config", {}).get("cross_attention_dim")
                return BY_NAME["sd2" if cross == 1024 else "sd1"]
            return family
    raise UnsupportedModel(describe_unsupported(name, name))


def for_keys(keys: dict) -> Family | None:
    """The family of a single-file checkpoint from its tensor names, or None when none claims it."""
    for family in FAMILIES:
        if family.claims_keys is not None and family.claims_keys(keys):
            return family
    return None


def describe_unsupported(class_name: str | None, what: str) -> str:
    """One line saying what a model is and what dream runs instead."""
    name = class_name or "unknown"
    lowered = name.lower()
    if any(word in lowered for word in ("video", "animate", "wan", "ltx", "mochi", "cogvideo", "i2v", "t2v")):
        kind = f"a video pipeline ({name})"
    elif any(word in lowered for word in ("audio", "music", "musicldm", "stableaudio")):
        kind = f"an audio pipeline ({name})"
    elif "controlnet" in lowered and "pipeline" not in lowered:
        kind = f"a ControlNet ({name}), not a base model"
    elif not class_name:
        kind = "no model_index.json dream can read"
    elif not lowered.endswith("pipeline"):
        kind = f"one model component ({name}), not a whole pipeline"
    else:
        kind = f"a {name}"
    return f"{what} is {kind}, which dream cannot run: dream runs {supported()} models"


UNET = "SD 1.x/2.x/SDXL (UNet)"
# Which models a LoRA file was made for, from fragments of its tensor names, in diffusers, kohya and
# original layouts. First match wins: kohya's Flux keys also start with `lora_unet_`.
LORA_KINDS = (
    ("Flux.1", ("double_blocks", "single_blocks", "single_transformer_blocks")),
    ("SD3", ("joint_blocks", "context_block")),
    (UNET, ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")),
)


def lora_kind(keys) -> str | None:
    """What a LoRA file was made for, from its tensor names (None when they do not say)."""
    for kind, fragments in LORA_KINDS:
        if any(fragment in key for key in keys for fragment in fragments):
            return kind
    return None


def _registry() -> tuple[Family, ...]:
    # Order matters where two could claim one model: the more specific family comes first.
    from dreamcli.families import flux, kandinsky, pixart, sd1, sd2, sd3, sdxl

    return (sdxl.FAMILY, sd2.FAMILY, sd1.FAMILY, sd3.FAMILY, flux.FAMILY, pixart.FAMILY, kandinsky.FAMILY)


FAMILIES: tuple[Family, ...] = _registry()
BY_NAME = {family.name: family for family in FAMILIES}
DISPLAY_ORDER = ("sd1", "sd2", "sdxl", "sd3", "flux", "pixart", "kandinsky")
