"""What every command shares: the stderr console, error handling, and the common flags."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from dreamcli.errors import DreamError, Note

# stdout carries only results (paths or JSON lines); everything for people goes to stderr.
console = Console(stderr=True, highlight=False)

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def error_line(message: str) -> None:
    """One red line on stderr, never wrapped (scripts grep for it)."""
    console.print(Text("error: ", style="bold red") + Text(message, style="red"), soft_wrap=True)


def hint(message: str, quiet: bool = False) -> None:
    """A dim one-line note on stderr, unless --quiet."""
    if not quiet:
        console.print(Text(message, style="dim"), soft_wrap=True)


# What the C library calls a full disk or quota; Rust (safetensors) and others quote the same text.
DISK_FULL = {errno.ENOSPC: os.strerror(errno.ENOSPC)}
if hasattr(errno, "EDQUOT"):  # not on Windows
    DISK_FULL[errno.EDQUOT] = os.strerror(errno.EDQUOT)


def disk_full_line(error: BaseException) -> str | None:
    """The one line for a write that failed because the disk (or the quota) is full, else None.

    Our own image writes say so themselves (io.outputs); this catches every other writer (training
    checkpoints, caches, libraries) so that a full disk is never a traceback.
    """
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        cause = DISK_FULL[error.errno].lower()
        return f"cannot write {error.filename or 'a file'}: {cause}: free some space and run again"
    text = str(error)
    cause = next((c for c in DISK_FULL.values() if c in text), None)
    if cause is not None:
        return f"cannot write a file: {cause.lower()} ({type(error).__name__}): free some space and run again"
    return None


@contextlib.contextmanager
def user_errors():
    """Turn DreamError into a red line and its exit code; a full disk into a red line and exit 1;
    unexpected errors keep their traceback. Notes the library warns of (errors.Note) are printed once each."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, Note):
            return original(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            console.print(Text("note: ", style="yellow") + Text(str(message)), soft_wrap=True)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", Note)
            original, warnings.showwarning = warnings.showwarning, show
            yield
    except DreamError as e:
        error_line(str(e))
        raise typer.Exit(e.exit_code) from None
    except Exception as e:
        line = disk_full_line(e)
        if line is None:
            raise
        error_line(line)  # the machine's state, not the input: exit 1
        raise typer.Exit(1) from None


def emit(line: str) -> None:
    """One result line on stdout, flushed so pipes see it as soon as the file exists."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---- flags shared by every command that generates (DESIGN: same flag, same meaning) ----
Model = Annotated[str | None, typer.Option(
    "-m", "--model", help="Preset name, HF repo id, diffusers folder or .safetensors file.",
    rich_help_panel="Model")]
Preset = Annotated[str | None, typer.Option(
    "--preset", help="Settings bundle (sd15, sd21, sdxl, sdxl-turbo, sd35-medium, sd35-large, flux-dev, flux-schnell, "
    "pixart-sigma, kandinsky22, demo, or your own).",
    rich_help_panel="Model")]
ModelConfig = Annotated[str | None, typer.Option(
    "--model-config", help="Diffusers folder or repo id whose configs fit a single-file checkpoint.",
    rich_help_panel="Model")]
Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="Sampler by friendly name; `--scheduler list` shows them.", rich_help_panel="Model")]
Lora = Annotated[list[str] | None, typer.Option(
    "--lora", help="LoRA file or folder, optional :SCALE (repeatable).", rich_help_panel="Model")]
Embedding = Annotated[list[str] | None, typer.Option(
    "--embedding", help="Textual-inversion embedding FILE[:WORD] (repeatable); files in $DREAMCLI_HOME/embeddings "
    "load when their name is in the prompt.", rich_help_panel="Model")]
Device = Annotated[str | None, typer.Option(
    "--device", help="auto | cpu | cuda[:N] | mps.", rich_help_panel="Hardware")]
Dtype = Annotated[str | None, typer.Option(
    "--dtype", help="auto | fp32 | fp16 | bf16.", rich_help_panel="Hardware")]
Offload = Annotated[str | None, typer.Option(
    "--offload", help="Keep weights in CPU memory, moved in as needed: model (one model at a time), group "
    "(blocks, prefetched), sequential (layer by layer, slowest), none; default auto: what fits the GPU.",
    metavar="MODE", rich_help_panel="Hardware")]
Quantize = Annotated[str | None, typer.Option(
    "--quantize", help="Smaller denoiser weights: fp8 (any device), nf4 or int8 (CUDA + bitsandbytes, also T5), "
    "none; default auto: fp8 on CUDA when that is what fits.", metavar="MODE", rich_help_panel="Hardware")]
NoT5 = Annotated[bool | None, typer.Option(
    "--no-t5", help="SD3 without its T5-XXL text encoder: 9.5 GB less, prompts lose some detail.",
    rich_help_panel="Hardware")]
VaeTiling = Annotated[bool | None, typer.Option(
    "--vae-tiling/--no-vae-tiling", help="Decode in tiles (large images, less memory).",
    rich_help_panel="Hardware")]
AttentionSlicing = Annotated[bool | None, typer.Option(
    "--attention-slicing/--no-attention-slicing", help="Compute attention in slices (less memory).",
    rich_help_panel="Hardware")]
Compile = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="torch.compile the UNet's repeated blocks; the first image pays the warm-up.",
    rich_help_panel="Hardware")]
ChannelsLast = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="channels_last layout for UNet and VAE (default: on with CUDA).",
    rich_help_panel="Hardware")]
FuseQkv = Annotated[bool | None, typer.Option(
    "--fuse-qkv/--no-fuse-qkv", help="Fused attention projections (default: on with CUDA, off while a LoRA is on).",
    rich_help_panel="Hardware")]
BatchSize = Annotated[int | None, typer.Option(
    "--batch-size", help="Images per model call: consecutive prompts of equal size, steps, guidance and "
    "negative prompt share one (default 1).", rich_help_panel="Hardware")]
AllowUnsafePickle = Annotated[bool | None, typer.Option(
    "--allow-unsafe-pickle", help="Allow .ckpt/.pt files (they can run code when loaded).",
    rich_help_panel="Model")]
Seed = Annotated[int | None, typer.Option("-s", "--seed", help="Base seed; image i uses seed+i.")]
Steps = Annotated[int | None, typer.Option("--steps", help="Denoising steps.")]
Guidance = Annotated[float | None, typer.Option("-g", "--guidance", help="Classifier-free guidance scale.")]
Negative = Annotated[str | None, typer.Option("--negative", help="Negative prompt.")]
Width = Annotated[int | None, typer.Option("-W", "--width", help="Width in pixels (multiple of 8).")]
Height = Annotated[int | None, typer.Option("-H", "--height", help="Height in pixels (multiple of 8).")]
NumImages = Annotated[int | None, typer.Option("-n", "--num-images", help="Images per prompt.")]
Outdir = Annotated[str | None, typer.Option("-o", "--outdir", help="Output folder.", rich_help_panel="Output")]
Format = Annotated[str | None, typer.Option(
    "--format", help="png | jpg | webp.", rich_help_panel="Output")]
Json = Annotated[bool, typer.Option(
    "--json", help="One JSON object per image on stdout.", rich_help_panel="Output")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or hints.", rich_help_panel="Output")]


# The flags every generating command (gen, inpaint, outpaint, colorize, upscale) has, in --help order,
# declared once: `with_shared_flags` adds them to a command. name -> (declaration, default).
SHARED_FLAGS = {
    "model": (Model, None), "preset": (Preset, None), "model_config": (ModelConfig, None),
    "num_images": (NumImages, None), "seed": (Seed, None), "steps": (Steps, None), "guidance": (Guidance, None),
    "negative": (Negative, None), "scheduler": (Scheduler, None), "lora": (Lora, None), "embedding": (Embedding, None),
    "outdir": (Outdir, None),
    "format": (Format, None), "device": (Device, None), "dtype": (Dtype, None), "offload": (Offload, None),
    "quantize": (Quantize, None), "no_t5": (NoT5, None), "vae_tiling": (VaeTiling, None),
    "attention_slicing": (AttentionSlicing, None), "compile": (Compile, None), "channels_last": (ChannelsLast, None),
    "fuse_qkv": (FuseQkv, None), "allow_unsafe_pickle": (AllowUnsafePickle, None),
}
OUTPUT_FLAGS = {"json_out": (Json, False), "quiet": (Quiet, False)}  # passed by name: every command reads them


def with_shared_flags(command):
    """Give a Typer command the shared flags without repeating their declarations.

    Typer reads a command's parameters through inspect.signature, so the wrapper's signature lists the
    command's own parameters, then SHARED_FLAGS and OUTPUT_FLAGS. The command receives the shared flags
    as one dict, `flags` (None where not given), and `json_out` and `quiet` by name.
    """
    own = inspect.signature(command, eval_str=True)
    kept = [p for p in own.parameters.values() if p.name != "flags" and p.name not in OUTPUT_FLAGS]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=declaration)
             for name, (declaration, default) in {**SHARED_FLAGS, **OUTPUT_FLAGS}.items()]
    signature = own.replace(parameters=kept + added)

    @functools.wraps(command)
    def wrapper(**arguments):
        flags = {name: arguments.pop(name) for name in SHARED_FLAGS}
        flags["lora"] = flags["lora"] or None  # Typer gives [] for a list option never used
        flags["embedding"] = flags["embedding"] or None
        return command(flags=flags, **arguments)

    wrapper.__signature__ = signature
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper


# ---- ControlNet flags (gen, img2img, inpaint) ----
Control = Annotated[list[str] | None, typer.Option(
    "--control", metavar="TYPE:IMAGE[:SCALE]", help="Steer with a ControlNet (repeatable): canny (edges found here), "
    "raw (IMAGE is already a map), or depth, openpose, lineart, softedge, normal, mlsd, scribble (controlnet-aux).",
    rich_help_panel="ControlNet")]
ControlModel = Annotated[list[str] | None, typer.Option(
    "--control-model", metavar="TYPE=REF", help="The ControlNet for a type (folder, hub id or file); default: the "
    "preset's \\[control] table (repeatable).", rich_help_panel="ControlNet")]
ControlStart = Annotated[float | None, typer.Option(
    "--control-start", help="Fraction of the steps where ControlNets start to steer (default 0).",
    rich_help_panel="ControlNet")]
ControlEnd = Annotated[float | None, typer.Option(
    "--control-end", help="Fraction of the steps where they stop (default 1).", rich_help_panel="ControlNet")]
GuessMode = Annotated[bool | None, typer.Option(
    "--guess-mode/--no-guess-mode",
    help="ControlNets see no prompt: they steer more (A1111's \"ControlNet is more important\").",
    rich_help_panel="ControlNet")]
CannyLow = Annotated[float | None, typer.Option(
    "--canny-low", help="canny: weak edge threshold, 0-255 gradient (default 100).", rich_help_panel="ControlNet")]
CannyHigh = Annotated[float | None, typer.Option(
    "--canny-high", help="canny: strong edge threshold (default 200).", rich_help_panel="ControlNet")]
# flag name -> (declaration, the settings key it sets)
CONTROL_FLAGS = {
    "control": (Control, "control_specs"), "control_model": (ControlModel, "control_models"),
    "control_start": (ControlStart, "control_start"), "control_end": (ControlEnd, "control_end"),
    "guess_mode": (GuessMode, "guess_mode"), "canny_low": (CannyLow, "canny_low"),
    "canny_high": (CannyHigh, "canny_high"),
}


def with_control_flags(command):
    """Give a command the ControlNet flags; their settings (None where not given) join its `flags`. Put it under
    `with_shared_flags`, which hands the command its `flags`."""
    own = inspect.signature(command, eval_str=True)
    kept = list(own.parameters.values())
    at = next((i for i, p in enumerate(kept) if p.name == "flags"), len(kept))
    added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=declaration)
             for name, (declaration, _) in CONTROL_FLAGS.items()]
    signature = own.replace(parameters=kept[:at] + added + kept[at:])

    @functools.wraps(command)
    def wrapper(**arguments):
        control = {key: arguments.pop(name) for name, (_, key) in CONTROL_FLAGS.items()}
        for key in ("control_specs", "control_models"):
            control[key] = control[key] or None  # Typer gives [] for a list option never used
        arguments["flags"] = {**(arguments.get("flags") or {}), **control}
        return command(**arguments)

    wrapper.__signature__ = signature
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper
