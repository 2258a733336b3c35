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
from dreamcli.requests import (
    FORMATS,
    GenRequest,
    batch_size_from,
    check_path_text,
    gen_request_from,
    model_options_from,
    shown,
)
from dreamcli.schedulers import fitting_families, scheduler_names

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
    batch_size: int = 1


def settings_from_image(path: str, flags: dict | None = None) -> dict:
    """Settings that re-make an image, from its dreamcli record (or A1111 parameters), validated.

    Metadata is text anyone can edit: every value is checked as a request would check it, and an
    error names the image and the field. A value the command line overrides (`flags`) is not checked.
    """
    from dreamcli.io.metadata import read_metadata

    meta = read_metadata(path)
    settings = image_settings(path, meta)
    if settings.get("control_units") and not (flags or {}).get("control_specs"):
        from dreamcli.tasks.control import recorded_units

        recorded_units(path, meta["dreamcli"])  # the same control pictures must still be where they were
    check_image_settings(path, settings, flags)
    return settings


def check_image_metadata(path: str, meta: dict) -> None:
    """Refuse an image whose metadata (read_metadata's dict) would not make a valid request (`dream info`)."""
    check_image_settings(path, image_settings(path, meta))
    versions = (meta["dreamcli"] or {}).get("versions", {})
    if not isinstance(versions, dict):  # `dream info` prints it as name-version pairs
        raise InputError(f"{path}: its dreamcli record's versions must be an object, got {shown(versions)}")


def image_settings(path: str, meta: dict) -> dict:
    """The settings (short names) an image's metadata records, types not yet checked."""
    from dreamcli.io.metadata import parse_a1111_parameters

    record = meta["dreamcli"]
    if record:
        req = _table(path, record, "request")
        model = _table(path, req, "model", "request.model")
        for where, table, key in ((req, "request", "prompt"), (model, "request.model", "model")):
            if where.get(key) is None:
                raise InputError(f"{path}: its dreamcli record has no {table}.{key}: it cannot be re-made")
        ref = model["model"]
        # A relative path recorded elsewhere may not resolve from here; the absolute one still does.
        recorded = record.get("model_path")
        if isinstance(ref, str) and not ref.startswith("package:") and not _exists(ref) and _exists(recorded):
            ref = recorded
        out = {
            "prompt": req["prompt"], "negative": req.get("negative_prompt"), "steps": req.get("num_inference_steps"),
            "guidance": req.get("guidance_scale"), "guidance_rescale": req.get("guidance_rescale", 0.0),
            "width": req.get("width"), "height": req.get("height"),
            "seed": record.get("seed"), "num_images": 1, "model": ref, "model_config": model.get("model_config"),
            "scheduler": model.get("scheduler"), "lora": model.get("loras"), "dtype": model.get("dtype"),
            "embedding": model.get("embeddings") or None,
            # Both change pixels: fp8 weights round, and SD3 without T5 sees less of the prompt.
            "quantize": model.get("quantize"), "no_t5": model.get("no_t5"),
            # Hires 0 (off) when the record has none, so that a preset's or config's hires does not apply.
            "hires": req.get("hires_scale") or 0, "hires_upscaler": req.get("hires_upscaler"),
            "hires_strength": req.get("hires_strength"), "hires_steps": req.get("hires_steps"),
            # ControlNets: each unit with its picture's path and model (settings_from_image checks the pictures)
            "control_units": req.get("control") or None,
        }
        return {k: v for k, v in out.items() if v is not None}  # what is missing takes the usual default
    if meta["parameters"]:
        params = parse_a1111_parameters(meta["parameters"])
        out = {"prompt": params["prompt"], "negative": params["negative_prompt"], "num_images": 1}
        for key, setting, kind in (("Steps", "steps", int), ("CFG scale", "guidance", float),
                                   ("CFG rescale", "guidance_rescale", float), ("Seed", "seed", int)):
            if key in params:
                out[setting] = _a1111_number(path, key, params[key], kind)
        if "Size" in params:
            sides = params["Size"].split("x")
            if len(sides) != 2:
                raise InputError(f"{path}: its A1111 Size {shown(params['Size'])} is not WIDTHxHEIGHT")
            out["width"], out["height"] = (_a1111_number(path, "Size", side, int) for side in sides)
        out.update(_a1111_hires(path, params))
        return out
    raise InputError(f"{path} has no generation parameters (no dreamcli or A1111 metadata)")


def _a1111_hires(path: str, params: dict) -> dict:
    """Hires settings from A1111's keys (its Denoising strength is the hires pass's in a txt2img record)."""
    if "Hires upscale" not in params:
        return {"hires": 0}
    out = {"hires": _a1111_number(path, "Hires upscale", params["Hires upscale"], float)}
    if "Hires upscaler" in params:
        out["hires_upscaler"] = params["Hires upscaler"]  # a name dream lacks is refused with the request's line
    if "Denoising strength" in params:
        out["hires_strength"] = _a1111_number(path, "Denoising strength", params["Denoising strength"], float)
    steps = _a1111_number(path, "Hires steps", params["Hires steps"], int) if "Hires steps" in params else 0
    if steps:  # A1111 writes no Hires steps, or 0, when the pass takes the first pass's steps
        out["hires_steps"] = steps
    return out


def check_image_settings(path: str, settings: dict, flags: dict | None = None) -> None:
    """Validate an image's settings as a request, naming the image; values set by `flags` are skipped."""
    own = {k: v for k, v in settings.items() if (flags or {}).get(k) is None}
    try:
        # A1111 text names no model we could load; a placeholder lets the rest be checked.
        model = model_options_from({"model": "-", **own})
        gen_request_from({"prompt": "", **own}, model)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _table(path: str, parent: dict, key: str, name: str | None = None) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise InputError(f"{path}: its dreamcli record's {name or key} must be an object, got {shown(value)}")
    return value


def _a1111_number(path: str, key: str, text: str, kind: type):
    try:
        return kind(text)
    except ValueError:  # also an integer of more than 4300 digits
        what = "a whole number" if kind is int else "a number"
        raise InputError(f"{path}: its A1111 {key} {shown(text)} is not {what}") from None


def _exists(path) -> bool:
    # Text from metadata may be no possible path at all (a NUL byte, a name too long for the OS).
    try:
        return isinstance(path, str) and Path(path).exists()
    except (OSError, ValueError):
        return False


def plan_gen(prompts: list[str], prompts_file: str | None, from_image: str | None, flags: dict) -> GenPlan:
    """Merge settings and validate every request up front, so bad input writes nothing."""
    from dreamcli.prompt_file import parse_prompt_lines, read_prompt_source

    base = settings_from_image(from_image, flags) if from_image else None
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
    check_path_text("outdir", settings["outdir"])  # a preset's text may hold what no path can
    outdir = Path(str(settings["outdir"])).expanduser()
    from dreamcli.io.outputs import check_outdir

    check_outdir(outdir)
    return GenPlan(requests, outdir, fmt, preset, batch_size_from(settings))


def run_plan(plan: GenPlan, as_json: bool, quiet: bool) -> int:
    """Load the model once, generate every request, write each image as soon as it exists.

    Under torchrun / `accelerate launch` the images are shared out between the processes instead.
    """
    from dreamcli.parallel import launched

    if launched():
        return run_sharded(plan, as_json, quiet)
    from dreamcli.run import generate_written

    loaded = _load(plan, quiet)
    total = sum(r.num_images for r in plan.requests)
    written, told = 0, set()
    started = time.perf_counter()
    progress, on_step = _progress(plan, quiet, total)
    try:
        with progress:
            for result, path in generate_written(plan.requests, plan.outdir, plan.fmt, plan.batch_size, on_step):
                _notes(result, told, quiet)
                written += 1
                progress.advance(progress.task_ids[0])
                progress.reset(progress.task_ids[1])
                emit(_result_line(path, result.record, as_json))
    except KeyboardInterrupt:
        hint(f"interrupted: kept {written} finished image(s) in {plan.outdir}")
        return common.INTERRUPTED
    _summary(written, time.perf_counter() - started, loaded, quiet)
    return 0


def run_remote(plan: GenPlan, url: str, as_json: bool, quiet: bool) -> int:
    """`--server URL`: a running `dream serve` makes the images, this process writes them as a local run would
    (same names, records and stdout lines). Nothing heavy is imported here, and nothing falls back to a local load.
    """
    from types import SimpleNamespace

    from dreamcli.client import Server, generate_remote
    from dreamcli.run import write

    server = Server(url)
    written, told = 0, set()
    started = time.perf_counter()
    try:
        for image, record, notes in generate_remote(server, plan):
            result = SimpleNamespace(image=image, seed=record["seed"], record=record, notes=notes)
            _notes(result, told, quiet)
            path = write(result, plan.outdir, plan.fmt)
            written += 1
            emit(_result_line(path, record, as_json))
    except KeyboardInterrupt:
        hint(f"interrupted: kept {written} finished image(s) in {plan.outdir}")
        return common.INTERRUPTED
    hint(f"{written} image(s) in {time.perf_counter() - started:.1f} s by {server.shown}", quiet)
    return 0


def run_sharded(plan: GenPlan, as_json: bool, quiet: bool) -> int:
    """One of several launched processes: make this process's share of the images.

    The main process draws the random seeds and reads the folder's next counter; image k of the run
    is written as counter start + k whichever process makes it, so the names are those a single
    process would write. Paths are printed by the main process, in run order, once all are done.
    """
    from dreamcli.engine import pick_device
    from dreamcli.io.outputs import ensure_outdir, next_counter
    from dreamcli.parallel import start_shard
    from dreamcli.run import write
    from dreamcli.tasks.generate import image_jobs, iter_generate_jobs

    shard = start_shard(pick_device(plan.requests[0].model.device))
    quiet_here = quiet or not shard.is_main
    jobs = shard.share(image_jobs(plan.requests) if shard.is_main else None)
    mine = shard.take(list(enumerate(jobs)))
    loaded = _load(plan, quiet_here) if mine else None
    outdir = ensure_outdir(plan.outdir)
    start = shard.share(next_counter(outdir) if shard.is_main else None)
    lines, started, told = [], time.perf_counter(), set()
    progress, on_step = _progress(plan, quiet_here, len(mine))
    try:
        with progress:
            results = iter_generate_jobs([job for _, job in mine], on_step, plan.batch_size)
            for (k, job), result in zip(mine, results, strict=True):
                _notes(result, told, quiet_here)
                path = write(result, outdir, plan.fmt, job.request.prompt, counter=start + k)
                lines.append((k, _result_line(path, result.record, as_json)))
                progress.advance(progress.task_ids[0])
                progress.reset(progress.task_ids[1])
    except KeyboardInterrupt:
        for _, line in lines:  # this process's finished images; the others print their own
            emit(line)
        hint(f"interrupted: process {shard.rank} kept {len(lines)} finished image(s) in {plan.outdir}")
        return common.INTERRUPTED
    everything = shard.gather(lines)
    if shard.is_main:
        for _, line in sorted(everything):
            emit(line)
        _summary(len(everything), time.perf_counter() - started, loaded, quiet, processes=shard.world)
    shard.close()
    return 0


def _load(plan: GenPlan, quiet: bool):
    """Load the first request's model (the cache serves the rest) and say what was loaded."""
    from dreamcli.run import load

    loaded, notes = load(plan.requests)
    if plan.requests[0].model.model.startswith("package:"):
        hint(DEMO_HINT, quiet)
    for note in notes:
        hint(note, quiet)
    return loaded


def _progress(plan: GenPlan, quiet: bool, total: int):
    """A progress display (images, then steps of the current call) and the on_step callback feeding it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=quiet or not console.is_terminal,  # no bars in logs
    )
    progress.add_task("images", total=total)
    steps = progress.add_task("steps", total=plan.requests[0].num_inference_steps)

    def on_step(done: int, of: int) -> None:
        progress.update(steps, completed=done, total=of)

    return progress, on_step


def _notes(result, told: set, quiet: bool) -> None:
    """A result's notes on stderr, each once per run (every image of a run would repeat them)."""
    for note in result.notes:
        if note not in told:
            told.add(note)
            hint(note, quiet)


def _summary(written: int, elapsed: float, loaded, quiet: bool, processes: int = 1) -> None:
    """One line: how many images, how long, and the compile warm-up apart from the per-image time."""
    warmup = (loaded.compile_seconds or 0.0) if loaded is not None else 0.0
    per_image = max(elapsed - warmup, 0.0) / max(written, 1)
    where = f" on {processes} processes" if processes > 1 else ""
    extra = f", after a {warmup:.1f} s compile warm-up" if warmup else ""
    hint(f"{written} image(s) in {elapsed:.1f} s{where} ({per_image:.2f} s/image{extra})", quiet)


def _result_line(path: Path, record: dict, as_json: bool) -> str:
    return json.dumps(_json_line(path, record)) if as_json else str(path)


def _json_line(path: Path, record: dict) -> dict:
    req = record["request"]
    return {
        "path": str(path), "seed": record["seed"], "prompt": req["prompt"],
        "negative_prompt": req["negative_prompt"], "model": record["model"],
        "model_hash": record["model_hash"], "width": record["width"], "height": record["height"],
        "steps": req["num_inference_steps"], "guidance": req["guidance_scale"],
        "scheduler": record["scheduler"], "index": record["index"],
    }


@common.with_shared_flags
@common.with_control_flags
def gen(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts; each makes -n images.")] = None,
    prompts_file: Annotated[str | None, typer.Option(
        "--prompts", help="File with one prompt (or JSON object) per line; - reads stdin.")] = None,
    from_image: Annotated[str | None, typer.Option(
        "--from", help="Re-make an image from its metadata (flags given here override).")] = None,
    guidance_rescale: Annotated[float | None, typer.Option(
        "--guidance-rescale", help="0-1: pull strong guidance back to the prompt's own contrast (0.7 for "
        "v-prediction models such as SD 2.x-v and the demo; default 0).")] = None,
    hires: Annotated[float | None, typer.Option(
        "--hires", metavar="SCALE", help="Hires fix: draw at the model's size, enlarge SCALE times (1.5, 2), then "
        "redraw the result with img2img, as A1111 does (0: off).")] = None,
    hires_upscaler: Annotated[str | None, typer.Option(
        "--hires-upscaler", help="How --hires enlarges: latent (the latents, bilinear: A1111's Latent; the "
        "default), lanczos (the picture), or an upscaler model's name or file (`dream upscale --upscaler "
        "list`).")] = None,
    hires_strength: Annotated[float | None, typer.Option(
        "--hires-strength", help="How much the --hires pass redraws: more than 0, at most 1 (A1111's Denoising "
        "strength; default 0.5).")] = None,
    hires_steps: Annotated[int | None, typer.Option(
        "--hires-steps", help="Steps of the --hires pass, before strength takes its share (default: --steps).")] = None,
    width: common.Width = None,
    height: common.Height = None,
    batch_size: common.BatchSize = None,
    server: Annotated[str | None, typer.Option(
        "--server", envvar="DREAM_SERVER", metavar="URL", help="Let a running `dream serve` make the images (also "
        "$DREAM_SERVER; credentials as http://USER:PASS@host:port); they are written here as usual.",
        rich_help_panel="Output")] = None,
    flags: dict | None = None,  # the shared and ControlNet flags: see common.with_*_flags
    json_out: bool = False,
    quiet: bool = False,
) -> None:
    """Generate images from text prompts."""
    if flags["scheduler"] == "list":
        from dreamcli.families import label

        for name in scheduler_names():  # the name, a tab, and the families it fits
            emit(f"{name}\t{', '.join(label(family) for family in fitting_families(name))}")
        return
    flags = {
        **flags,  # the flags every generating command has
        "guidance_rescale": guidance_rescale, "width": width, "height": height, "batch_size": batch_size,
        "hires": hires, "hires_upscaler": hires_upscaler, "hires_strength": hires_strength, "hires_steps": hires_steps,
    }
    with user_errors():
        plan = plan_gen(prompts or [], prompts_file, from_image, flags)
        given = [name for name, value in (("--hires-upscaler", hires_upscaler), ("--hires-strength", hires_strength),
                                          ("--hires-steps", hires_steps)) if value is not None]
        if given and not any(request.hires_scale for request in plan.requests):
            hint(f"{', '.join(given)} does nothing without --hires SCALE", quiet)
        if server and any(request.control for request in plan.requests):
            raise InputError("--control names pictures on this machine, which the server cannot read: run without "
                             "--server")
        code = run_remote(plan, server, json_out, quiet) if server else run_plan(plan, json_out, quiet)
    if code:
        raise typer.Exit(code)
