"""`dream tune` (alias `dreambooth-tune`): teach a model a subject from a few photos (DreamBooth + LoRA)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from dreamcli.cli import common
from dreamcli.cli.common import console, emit, hint, user_errors
from dreamcli.config import merge_settings
from dreamcli.errors import InputError
from dreamcli.requests import TuneConfig

TRAINING = "Training"
PRIOR = "Prior preservation"
RUN = "Checkpoints and validation"

# Flag name -> TuneConfig field; the same short names work in a preset's or config's [tune] table.
FLAG_TO_FIELD = {
    "images": "instance_data_dir", "class_word": "class_word", "token": "token", "outdir": "output_dir",
    "prompt": "instance_prompt", "class_prompt": "class_prompt", "steps": "max_train_steps",
    "lr": "learning_rate", "rank": "rank", "alpha": "lora_alpha", "layers": "lora_layers",
    "batch_size": "train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "resolution": "resolution", "random_crop": "random_crop",
    "prior": "with_prior_preservation", "prior_weight": "prior_loss_weight", "class_images": "num_class_images",
    "class_dir": "class_data_dir", "train_text_encoder": "train_text_encoder",
    "mixed_precision": "mixed_precision", "gradient_checkpointing": "gradient_checkpointing",
    "use_8bit_adam": "use_8bit_adam", "quantize": "quantize", "offload": "offload",
    "checkpoint_every": "checkpointing_steps", "resume": "resume",
    "overwrite": "overwrite", "validation_prompt": "validation_prompt", "validation_every": "validation_steps",
    "validation_images": "num_validation_images", "seed": "seed", "export": "export",
    "timestep_density": "timestep_density",
}


def tune_config_from(flags: dict, model_flags: dict) -> TuneConfig:
    """Merge flags over the preset's and user config's `[tune]` tables and build a validated TuneConfig."""
    settings, _ = merge_settings(model_flags)
    table = settings.get("tune") or {}
    if not isinstance(table, dict):
        raise InputError("the [tune] setting must be a table of tune flags (steps = 400, rank = 4, ...)")
    unknown = sorted(set(table) - set(FLAG_TO_FIELD))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in a [tune] table: use one of {', '.join(sorted(FLAG_TO_FIELD))}")
    merged = {**table, **{k: v for k, v in flags.items() if v is not None}}
    if merged.get("export"):
        merged["export"] = tuple(merged["export"]) if not isinstance(merged["export"], str) else (merged["export"],)
    if not merged.get("outdir") and merged.get("class_word"):
        merged["outdir"] = f"tune-{merged.get('token') or 'sks'}-{merged['class_word']}".replace(" ", "-")
    kwargs = {FLAG_TO_FIELD[k]: v for k, v in merged.items() if k in FLAG_TO_FIELD}
    return TuneConfig(
        model=settings.get("model") or "",
        model_config=settings.get("model_config"),
        allow_unsafe_pickle=bool(settings.get("allow_unsafe_pickle")),
        device=settings.get("device") or "auto",
        # Class and validation images use the model's usual sampling settings.
        # TuneConfig checks their types and ranges like any other field.
        class_steps=settings.get("steps") or 30,
        class_guidance=settings.get("guidance") or 7.5,
        **{"instance_data_dir": "", "class_word": "", "output_dir": "", **kwargs},
    )


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        console=console, transient=True,
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _size(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def progress_status(stage: str, done: int, total: int, speed: float | None, info: dict) -> str:
    """The text after a progress bar: speed and ETA once measured, then (training) the smoothed loss and
    the peak memory, e.g. `7.61 steps/s  ETA 0:01:29  loss 0.1234  peak RAM 618 MiB`."""
    parts = []
    if speed:
        parts.append(f"{speed:.2f} {'steps' if stage == 'training' else 'images'}/s")
        parts.append(f"ETA {_clock(max(total - done, 0) / speed)}")
    if info.get("loss") is not None:
        parts.append(f"loss {info['loss']:.4f}")
    if info.get("peak_mb") is not None:
        parts.append(f"peak {info.get('memory', 'RAM')} {_size(info['peak_mb'])}")
    return "  ".join(parts)


def run_tune(config: TuneConfig, as_json: bool, quiet: bool) -> int:
    """Check inputs, train with a progress bar on stderr, print the written weights on stdout."""
    from dreamcli.training import check_inputs, rundir
    from dreamcli.training import tune as train

    inputs = check_inputs(config)
    for warning in inputs.warnings:
        if not quiet:
            console.print(Text("warning: " + warning, style="yellow"), soft_wrap=True)
    hint(
        f"teaching {config.instance_text!r} from {len(inputs.instance_images)} image(s) at {inputs.resolution}px"
        + (f", prior: {config.class_text!r}" if config.with_prior_preservation else ", no prior preservation"),
        quiet,
    )
    progress = _progress()
    tasks: dict[str, int] = {}

    peaks: dict[str, float] = {}

    def on_progress(stage: str, done: int, total: int, **info) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total, completed=done, status="")
        progress.update(tasks[stage], completed=done, total=total)  # first, so the speed counts this step
        if info.get("peak_mb") is not None:  # a peak only grows (MPS reports what it holds now)
            info["peak_mb"] = peaks[stage] = max(peaks.get(stage, 0.0), info["peak_mb"])
        status = progress_status(stage, done, total, progress.tasks[tasks[stage]].speed, info)
        progress.update(tasks[stage], status=status)

    try:
        with progress if not quiet else _nothing():
            result = train(config, inputs, on_progress=on_progress, on_note=lambda text: hint(text, quiet))
    except KeyboardInterrupt:
        found = rundir.checkpoints(Path(config.output_dir).expanduser())
        where = f"checkpoint at step {found[-1][0]} saved" if found else "no checkpoint yet"
        hint(f"interrupted: {where}; continue with the same command plus --resume")
        return common.INTERRUPTED
    if not result.is_main_process:
        return 0
    hint(
        f"{result.steps} steps at {result.steps_per_second:.2f} steps/s, peak {result.peak_memory[0]} "
        f"{_size(result.peak_memory[1])}; "
        f"use it: dream gen --lora {result.outdir} \"{config.validation_prompt or config.instance_text}\"",
        quiet,
    )
    chart = result.outdir / rundir.LOSS_CHART_NAME
    if chart.exists():
        grids = f", validation grids in {result.outdir / rundir.VALIDATION}" if result.validation_images else ""
        hint(f"loss curve: {chart}{grids}", quiet)
    if as_json:
        emit(json.dumps({
            "weights": str(result.weights), "outdir": str(result.outdir), "steps": result.steps,
            "exports": [str(p) for p in result.exports],
            "validation_images": [str(p) for p in result.validation_images],
            "final_loss": result.final_loss, "steps_per_second": result.steps_per_second,
            "peak_rss_mb": result.peak_rss_mb, "peak_memory": result.peak_memory[0],
            "peak_memory_mb": round(result.peak_memory[1], 1),
        }))
    else:
        for path in [result.weights, *result.exports]:
            emit(str(path))
    return 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tune(
    images: Annotated[str | None, typer.Option(
        "--images", help="Folder with 3-20 photos of the subject.", show_default=False)] = None,
    class_word: Annotated[str | None, typer.Option(
        "--class", help="What the subject is (dog, person, mug): the prior to keep.", show_default=False)] = None,
    token: Annotated[str | None, typer.Option("--token", help="Rare word bound to the subject (default: sks).")] = None,
    model: common.Model = None,
    preset: common.Preset = None,
    model_config: common.ModelConfig = None,
    outdir: common.Outdir = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", help="Instance prompt (default: a photo of {token} {class}).")] = None,
    class_prompt: Annotated[str | None, typer.Option(
        "--class-prompt", help="Class prompt (default: a photo of {class}).", rich_help_panel=PRIOR)] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Optimisation steps (default: 400).", rich_help_panel=TRAINING)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Learning rate (default: 1e-4).", rich_help_panel=TRAINING)] = None,
    rank: Annotated[int | None, typer.Option(
        "--rank", help="LoRA rank (default: 4).", rich_help_panel=TRAINING)] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="LoRA alpha; scale = alpha/rank (default: rank).", rich_help_panel=TRAINING)] = None,
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Layers that get adapters: attention (default, the usual DreamBooth-LoRA) or all (also "
        "convolutions and feed-forwards: for a shape the model has never drawn; a larger file).",
        rich_help_panel=TRAINING)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Instance images per step per process (default: 1).", rich_help_panel=TRAINING)] = None,
    grad_accum: Annotated[int | None, typer.Option(
        "--grad-accum", help="Batches accumulated per step (default: 1).", rich_help_panel=TRAINING)] = None,
    resolution: Annotated[int | None, typer.Option(
        "--resolution", help="Training size in px (default: the model's).", rich_help_panel=TRAINING)] = None,
    random_crop: Annotated[bool | None, typer.Option(
        "--random-crop/--center-crop", help="Random crop + flip instead of a centre crop.",
        rich_help_panel=TRAINING, show_default=False)] = None,
    train_text_encoder: Annotated[bool | None, typer.Option(
        "--train-text-encoder/--no-train-text-encoder", help="Also put LoRA adapters on the text encoder.",
        rich_help_panel=TRAINING, show_default=False)] = None,
    mixed_precision: Annotated[str | None, typer.Option(
        "--mixed-precision", help="no | fp16 | bf16 (default: no).", rich_help_panel=TRAINING)] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option(
        "--gradient-checkpointing", help="Recompute activations: less memory, ~30% slower.",
        rich_help_panel=TRAINING)] = None,
    use_8bit_adam: Annotated[bool | None, typer.Option(
        "--8bit-adam", help="8-bit AdamW (needs bitsandbytes).", rich_help_panel=TRAINING)] = None,
    quantize: Annotated[str | None, typer.Option(
        "--quantize", help="fp8: keep the frozen denoiser's linear layers in fp8, cast up as each runs (the denoiser "
        "takes 55-70% of its bf16 memory; needs --mixed-precision bf16 or fp16); none (default).", metavar="MODE",
        rich_help_panel="Hardware")] = None,
    offload: Annotated[bool | None, typer.Option(
        "--offload", help="Keep the VAE and frozen text encoders in CPU memory except while they run, and draw "
        "class and validation pictures one model at a time on the GPU.", rich_help_panel="Hardware")] = None,
    seed: Annotated[int | None, typer.Option(
        "-s", "--seed", help="Seed for adapter init, noise and shuffling (default: 0).",
        rich_help_panel=TRAINING)] = None,
    prior: Annotated[bool | None, typer.Option(
        "--prior/--no-prior", help="Prior-preservation loss on class images (default: on).",
        rich_help_panel=PRIOR, show_default=False)] = None,
    prior_weight: Annotated[float | None, typer.Option(
        "--prior-weight", help="Weight of the class loss (default: 1).", rich_help_panel=PRIOR)] = None,
    class_images: Annotated[int | None, typer.Option(
        "--class-images", help="Class images to use (default: 100).", rich_help_panel=PRIOR)] = None,
    class_dir: Annotated[str | None, typer.Option(
        "--class-dir", help="Your own class images (topped up by the model if too few).",
        rich_help_panel=PRIOR)] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", help="Checkpoint every N steps (default: 100).", rich_help_panel=RUN)] = None,
    resume: Annotated[bool | None, typer.Option(
        "--resume", help="Continue the run in OUTDIR from its newest checkpoint.", rich_help_panel=RUN)] = None,
    overwrite: Annotated[bool | None, typer.Option(
        "--overwrite", help="Replace a previous run in OUTDIR.", rich_help_panel=RUN)] = None,
    validation_prompt: Annotated[str | None, typer.Option(
        "--validation-prompt", help="Prompt for validation images (default: the instance prompt).",
        rich_help_panel=RUN)] = None,
    validation_every: Annotated[int | None, typer.Option(
        "--validation-every", help="Validation images every N steps (0: at the end only).",
        rich_help_panel=RUN)] = None,
    validation_images: Annotated[int | None, typer.Option(
        "--validation-images", help="Validation images each time (default: 2).", rich_help_panel=RUN)] = None,
    timestep_density: Annotated[str | None, typer.Option(
        "--timestep-density", help="SD3 and Flux: how training timesteps are drawn: logit_normal (default), mode, "
        "cosmap or uniform.", rich_help_panel=TRAINING)] = None,
    export: Annotated[list[str] | None, typer.Option(
        "--export", help="Also write another format: kohya (A1111, ComfyUI).", rich_help_panel="Output")] = None,
    device: common.Device = None,
    allow_unsafe_pickle: common.AllowUnsafePickle = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON object for the run on stdout.", rich_help_panel="Output")] = False,
    quiet: common.Quiet = False,
) -> None:
    """Teach a model a new subject from a few photos (DreamBooth with LoRA and prior preservation)."""
    flags = {
        "images": images, "class_word": class_word, "token": token, "outdir": outdir, "prompt": prompt,
        "class_prompt": class_prompt, "steps": steps, "lr": lr, "rank": rank, "alpha": alpha,
        "layers": layers,
        "batch_size": batch_size, "grad_accum": grad_accum, "resolution": resolution, "random_crop": random_crop,
        "prior": prior, "prior_weight": prior_weight, "class_images": class_images, "class_dir": class_dir,
        "train_text_encoder": train_text_encoder, "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing, "use_8bit_adam": use_8bit_adam,
        "quantize": quantize, "offload": offload,
        "checkpoint_every": checkpoint_every, "resume": resume, "overwrite": overwrite,
        "validation_prompt": validation_prompt, "validation_every": validation_every,
        "validation_images": validation_images, "seed": seed, "export": export or None,
        "timestep_density": timestep_density,
    }
    model_flags = {
        "model": model, "preset": preset, "model_config": model_config, "device": device,
        "allow_unsafe_pickle": allow_unsafe_pickle,
    }
    # Under torchrun / accelerate launch only the first process talks; the others train silently.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    with user_errors():
        config = tune_config_from(flags, model_flags)
        code = run_tune(config, json_out, quiet)
    if code:
        raise typer.Exit(code)
