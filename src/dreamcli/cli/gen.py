"""`dream gen`: text to image."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import console, emit, hint, user_errors
from dreamcli.config import merge_settings
from dreamcli.errors import InputError
from dreamcli.requests import FORMATS, GenRequest, gen_request_from, model_options_from
from dreamcli.schedulers import scheduler_names

DEMO_HINT = (
    "using the built-in demo model (coloured shapes only); for real pictures name a checkpoint: "
    "dream gen -m model.safetensors \"...\" (or --preset sd15 / sdxl)"
)


@dataclass
class GenPlan:
    """Everything decided before any model is loaded: requests, where and how to write."""

    requests: list[GenRequest]
    outdir: Path
    fmt: str
    preset: str | None


def settings_from_image(path: str) -> dict:
    """Settings that re-make an image, from its dreamcli record (or A1111 parameters)."""
    from dreamcli.io.metadata import parse_a1111_parameters, read_metadata

    meta = read_metadata(path)
    record = meta["dreamcli"]
    if record:
        req, model = record["request"], record["request"]["model"]
        ref = model["model"]
        # A relative path recorded elsewhere may not resolve from here; the absolute one still does.
        if not ref.startswith("package:") and not Path(ref).exists() and Path(record.get("model_path", "")).exists():
            ref = record["model_path"]
        return {
            "prompt": req["prompt"], "negative": req["negative_prompt"], "steps": req["num_inference_steps"],
            "guidance": req["guidance_scale"], "width": req["width"], "height": req["height"],
            "seed": record["seed"], "num_images": 1, "model": ref, "model_config": model["model_config"],
            "scheduler": model["scheduler"], "lora": model["loras"], "dtype": model["dtype"],
        }
    if meta["parameters"]:
        params = parse_a1111_parameters(meta["parameters"])
        out = {"prompt": params["prompt"], "negative": params["negative_prompt"], "num_images": 1}
        try:
            if "Steps" in params:
                out["steps"] = int(params["Steps"])
            if "CFG scale" in params:
                out["guidance"] = float(params["CFG scale"])
            if "Seed" in params:
                out["seed"] = int(params["Seed"])
            if "Size" in params:
                out["width"], out["height"] = (int(v) for v in params["Size"].split("x"))
        except ValueError:
            raise InputError(f"{path}: its A1111 parameters are malformed") from None
        return out
    raise InputError(f"{path} has no generation parameters (no dreamcli or A1111 metadata)")


def plan_gen(prompts: list[str], prompts_file: str | None, from_image: str | None, flags: dict) -> GenPlan:
    """Merge settings and validate every request up front, so bad input writes nothing."""
    from dreamcli.prompt_file import parse_prompt_lines, read_prompt_source

    base = settings_from_image(from_image) if from_image else None
    settings, preset = merge_settings(flags, base)
    items = [{"prompt": p} for p in prompts]
    if prompts_file:
        items += parse_prompt_lines(*read_prompt_source(prompts_file))
    if not items:
        if not from_image:
            raise InputError("no prompt: give one or more prompts, or --prompts FILE (- for stdin)")
        items = [{}]
    model = model_options_from(settings)
    requests = []
    for item in items:
        line = item.pop("_line", None)
        try:
            requests.append(gen_request_from({**settings, **item}, model))
        except InputError as e:
            if line is None:
                raise
            raise InputError(f"{prompts_file} line {line}: {e}") from None
    fmt = str(settings["format"]).lower().replace("jpeg", "jpg")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {settings['format']!r}: use png, jpg or webp")
    outdir = Path(str(settings["outdir"])).expanduser()
    from dreamcli.io.outputs import check_outdir

    check_outdir(outdir)
    return GenPlan(requests, outdir, fmt, preset)


def run_plan(plan: GenPlan, as_json: bool, quiet: bool) -> int:
    """Load the model once, generate every request, write each image as soon as it exists."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dreamcli.checkpoints import FAMILIES
    from dreamcli.engine import load_model
    from dreamcli.io.metadata import save_options
    from dreamcli.io.outputs import ensure_outdir, save_atomic
    from dreamcli.tasks import iter_generate

    first = plan.requests[0].model
    started = time.perf_counter()
    loaded = load_model(first)
    if first.model.startswith("package:"):
        hint(DEMO_HINT, quiet)
    hint(
        f"model {loaded.source.name} ({FAMILIES.get(loaded.family, loaded.family)}) "
        f"on {loaded.device}, {loaded.dtype}, "
        f"loaded in {time.perf_counter() - started:.1f} s",
        quiet,
    )
    total = sum(r.num_images for r in plan.requests)
    written = 0
    started = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=quiet or not console.is_terminal,  # no bars in logs
    )
    try:
        with progress:
            images = progress.add_task("images", total=total)
            steps = progress.add_task("steps", total=plan.requests[0].num_inference_steps)
            for request in plan.requests:

                def on_step(done: int, of: int) -> None:
                    progress.update(steps, completed=done, total=of)

                for result in iter_generate(request, on_step):
                    outdir = ensure_outdir(plan.outdir)
                    path = save_atomic(
                        result.image, outdir, result.seed, request.prompt, plan.fmt,
                        **save_options(result.record, plan.fmt),
                    )
                    written += 1
                    progress.update(images, advance=1)
                    progress.reset(steps)
                    emit(json.dumps(_json_line(path, result.record)) if as_json else str(path))
    except KeyboardInterrupt:
        hint(f"interrupted: kept {written} finished image(s) in {plan.outdir}")
        return common.INTERRUPTED
    elapsed = time.perf_counter() - started
    hint(f"{written} image(s) in {elapsed:.1f} s ({elapsed / max(written, 1):.2f} s/image)", quiet)
    return 0


def _json_line(path: Path, record: dict) -> dict:
    req = record["request"]
    return {
        "path": str(path), "seed": record["seed"], "prompt": req["prompt"],
        "negative_prompt": req["negative_prompt"], "model": record["model"],
        "model_hash": record["model_hash"], "width": record["width"], "height": record["height"],
        "steps": req["num_inference_steps"], "guidance": req["guidance_scale"],
        "scheduler": record["scheduler"], "index": record["index"],
    }


def gen(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts; each makes -n images.")] = None,
    prompts_file: Annotated[str | None, typer.Option(
        "--prompts", help="File with one prompt (or JSON object) per line; - reads stdin.")] = None,
    from_image: Annotated[str | None, typer.Option(
        "--from", help="Re-make an image from its metadata (flags given here override).")] = None,
    model: common.Model = None,
    preset: common.Preset = None,
    model_config: common.ModelConfig = None,
    num_images: common.NumImages = None,
    seed: common.Seed = None,
    steps: common.Steps = None,
    guidance: common.Guidance = None,
    negative: common.Negative = None,
    width: common.Width = None,
    height: common.Height = None,
    scheduler: common.Scheduler = None,
    lora: common.Lora = None,
    outdir: common.Outdir = None,
    format: common.Format = None,
    device: common.Device = None,
    dtype: common.Dtype = None,
    offload: common.Offload = None,
    vae_tiling: common.VaeTiling = None,
    attention_slicing: common.AttentionSlicing = None,
    allow_unsafe_pickle: common.AllowUnsafePickle = None,
    json_out: common.Json = False,
    quiet: common.Quiet = False,
) -> None:
    """Generate images from text prompts."""
    if scheduler == "list":
        for name in scheduler_names():
            emit(name)
        return
    flags = {
        "model": model, "preset": preset, "model_config": model_config, "num_images": num_images,
        "seed": seed, "steps": steps, "guidance": guidance, "negative": negative, "width": width,
        "height": height, "scheduler": scheduler, "lora": lora or None, "outdir": outdir, "format": format,
        "device": device, "dtype": dtype, "offload": offload, "vae_tiling": vae_tiling,
        "attention_slicing": attention_slicing, "allow_unsafe_pickle": allow_unsafe_pickle,
    }
    with user_errors():
        plan = plan_gen(prompts or [], prompts_file, from_image, flags)
        code = run_plan(plan, json_out, quiet)
    if code:
        raise typer.Exit(code)
