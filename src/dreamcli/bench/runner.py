"""Run the benchmark: each shape through plain diffusers and dreamcli's path, then the command-line figures."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

try:
    import resource
except ImportError:  # Windows: no CPU time of child processes to read
    resource = None

from dreamcli import engine  # noqa: F401  (first: it quiets diffusers' and transformers' import-time chatter)
from dreamcli.bench.paths import DiffusersPath, DreamcliPath, peak_gb, reset_peak, sync
from dreamcli.bench.roofline import denoiser_flops, matmul_peak, native_size
from dreamcli.bench.settings import BenchConfig, is_full_size, shape_dtype
from dreamcli.bench.shapes import SHAPES, saved_shape

Note = Callable[[str], None]


class StepClock:
    """An on_step callback timing steps 2..N: it waits for the device only at the first and the last step.

    The first step is left out (it holds one-off work: kernel choice, compile guards); waiting at every
    step would stall the GPU queue and slow down the very thing measured.
    """

    def __init__(self, device: str):
        self.device = device
        self.first = self.last = None
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.total = total
        if done == 1:
            sync(self.device)
            self.first = time.perf_counter()
        elif done == total and self.last is None:  # only the first report of the last step counts
            sync(self.device)
            self.last = time.perf_counter()

    def rate(self) -> float:
        """Denoising steps (denoiser calls) per second over steps 2..N, N as the pipeline counted them."""
        return (self.total - 1) / (self.last - self.first)


def measure_run(path, s: BenchConfig, batch: int, steps: int, size: tuple[int, int]) -> dict:
    """One timed generation of `batch` images: it/s, seconds per image end to end, peak memory."""
    clock = StepClock(s.device)
    reset_peak(s.device)
    sync(s.device)
    started = time.perf_counter()
    # Random weights may decode to NaN pixels; numpy's cast warnings about them are noise here.
    with np.errstate(invalid="ignore"):
        made = path.generate(s.prompt, batch, steps, s.guidance_scale, size, clock)
    sync(s.device)
    seconds = time.perf_counter() - started
    if made != batch:
        raise RuntimeError(f"{path.name} made {made} images instead of {batch}")
    return {"it_per_s": clock.rate(), "s_per_image": seconds / batch, "seconds": seconds,
            "peak_gb": peak_gb(s.device)}


def measure_path(path, s: BenchConfig, size: tuple[int, int], batches: tuple[int, ...], note: Note) -> dict:
    """Load time, then an untimed warm-up and a timed run per batch size; the path is closed afterwards."""
    try:
        note(f"{path.name}: load")
        result = {"load_s": path.load(), "batch": {}}
        for batch in batches:
            note(f"{path.name}: batch {batch}, {s.steps} steps")
            if s.warmup_steps:
                with np.errstate(invalid="ignore"):
                    path.generate(s.prompt, batch, s.warmup_steps, s.guidance_scale, size, lambda *_: None)
            result["batch"][str(batch)] = measure_run(path, s, batch, s.steps, size)
        result.update(path.details())
        return result
    finally:
        path.close()


def warm_page_cache(folder: Path) -> None:
    """Read every file once, so neither path's load time includes the first read from disk."""
    for file in sorted(Path(folder).rglob("*")):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def add_roofline(result: dict, flops: dict[int, int] | None, peak_tflops: float | None) -> None:
    """Denoiser TFLOP/s achieved in each run (FLOPs per step x steps per second) and its fraction of the peak;
    None where the denoiser's FLOPs are not counted."""
    for batch, run in result["batch"].items():
        achieved = flops[int(batch)] * run["it_per_s"] / 1e12 if flops else None
        run["denoiser_tflops"] = achieved
        run["roofline"] = achieved / peak_tflops if achieved is not None and peak_tflops else None


def ratio(top: float | None, bottom: float | None) -> float | None:
    """top / bottom, or None when either is missing (e.g. GPU memory on a CPU)."""
    return top / bottom if top is not None and bottom else None


def baseline(label: str, labels) -> str:
    """What a path is compared with: plain diffusers, in fp8 too where the path stores weights in fp8."""
    return "diffusers+fp8" if label.endswith("+fp8") and label != "diffusers+fp8" and "diffusers+fp8" in labels \
        else "diffusers"


def compare(ours: dict, theirs: dict, against: str = "diffusers") -> dict:
    """A path against its baseline, each ratio above 1 where the path is better, except memory (below 1)."""
    out = {"baseline": against, "load_speedup": ratio(theirs["load_s"], ours["load_s"]), "batch": {}}
    for batch, run in ours["batch"].items():
        base = theirs["batch"].get(batch)
        if base is not None:
            out["batch"][batch] = {
                "it_per_s": ratio(run["it_per_s"], base["it_per_s"]),
                "s_per_image": ratio(base["s_per_image"], run["s_per_image"]),
                "peak_memory": ratio(run["peak_gb"], base["peak_gb"]),
            }
    return out


def measure_model(name: str, s: BenchConfig, workdir: Path, peak_tflops: float | None, note: Note) -> dict:
    """Every path on one shape; ratios and roofline fractions computed from the measured numbers."""
    from dreamcli import families
    from dreamcli.engine import folder_family

    if is_full_size(name) and not s.device.startswith("cuda"):
        note(f"{name}: a full-size model on a CPU takes seconds per step; fewer --steps keep it short")
    dtype = shape_dtype(name, s.device, s.dtype)
    if dtype != s.dtype:
        note(f"{name}: runs in {dtype}, as the model is published (fp16 overflows its T5 encoder)")
    if name in SHAPES:
        note(f"{name}: building or reusing its {dtype} folder under {workdir}")
    folder = saved_shape(name, workdir, dtype, s.device)
    family = folder_family(folder)
    size = native_size(folder, SHAPES[name].size if name in SHAPES else None)
    flops = denoiser_flops(folder, family, s.batch_sizes, size, s.guidance_scale)
    warm_page_cache(folder)
    paths = [
        (DiffusersPath(folder, family, s.device, dtype), s.batch_sizes),
        (DreamcliPath(folder, s.device, dtype), s.batch_sizes),
    ]
    if s.fp8 and families.get(family).denoiser == "transformer":
        paths.append((DiffusersPath(folder, family, s.device, dtype, fp8=True), s.batch_sizes))
        paths.append((DreamcliPath(folder, s.device, dtype, fp8=True), s.batch_sizes))
    if s.compile:
        paths.append((DreamcliPath(folder, s.device, dtype, compile=True), s.batch_sizes))
    if s.offload and s.device != "cpu":  # dreamcli ignores offloading on a CPU: nothing to offload to
        paths.append((DreamcliPath(folder, s.device, dtype, offload=True), (min(s.batch_sizes),)))
    entry = {
        "shape": name, "description": SHAPES[name].description if name in SHAPES else "built-in demo model",
        "family": family, "dtype": dtype, "folder": str(folder), "width": size[0], "height": size[1],
        "denoiser": families.get(family).denoiser,
        "denoiser_flops_per_step": None if flops is None else {str(b): f for b, f in flops.items()},
        "paths": {}, "ratios": {},
    }
    for path, batches in paths:
        result = measure_path(path, s, size, batches, lambda text: note(f"{name} {text}"))
        add_roofline(result, flops, peak_tflops)
        entry["paths"][path.name] = result
    for label, result in entry["paths"].items():
        if label != "diffusers":
            against = baseline(label, entry["paths"])
            entry["ratios"][label] = compare(result, entry["paths"][against], against)
    return entry


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def meta(s: BenchConfig, workdir: Path) -> dict:
    """Where and with what the figures were taken."""
    from dreamcli.tasks.generate import versions

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": s.device, "device_name": device_name(s.device), "dtype": s.dtype,
        "versions": {**versions(), "python": platform.python_version(), "cuda": torch.version.cuda},
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "workdir": str(workdir),
    }


def quiet_libraries(shapes: tuple[str, ...] = ()) -> None:
    """No library progress bars on stderr, and both paths' pipeline code imported before any load is timed.

    diffusers imports its pipeline modules on first use: without this, whichever path loads first
    would be charged for the imports (`dream bench --cli` times start-up separately).
    """
    import diffusers
    import transformers

    from dreamcli import families

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    names = {SHAPES[name].family if name in SHAPES else "sd1" for name in shapes}  # the demo model is an SD 1.x
    for name in ["AutoPipelineForText2Image"] + [families.get(family).pipeline_class("text2img") for family in names]:
        getattr(diffusers, name)


def run_bench(config: BenchConfig, workdir: Path, note: Note) -> dict:
    """Measure everything the config asks for; returns the results (see report.py for their layout)."""
    from dreamcli.bench.cli_times import measure_cli
    from dreamcli.bench.report import evaluate_targets
    from dreamcli.engine import DTYPES, pick_device, pick_dtype

    started = time.perf_counter()
    device = pick_device(config.device)
    s = config.resolved(device, pick_dtype(config.dtype, device))
    quiet_libraries(s.shapes)
    results = {"meta": meta(s, workdir), "settings": s.to_dict(), "matmul_peak": None, "models": [], "cli": None}
    if s.shapes:
        cuda = device.startswith("cuda")
        # bf16 on a GPU, as the roofline target says (fp16 runs at the same tensor-core rate); on a CPU the
        # dtype the model runs in.
        peak_dtype = torch.bfloat16 if cuda else DTYPES[s.dtype]
        n = (4096 if s.quick else 8192) if cuda else (256 if s.quick else 1024)
        note(f"matmul peak: {n}x{n} {str(peak_dtype).removeprefix('torch.')}")
        results["matmul_peak"] = matmul_peak(device, peak_dtype, n, iters=50 if cuda else 10)
        for name in s.shapes:
            results["models"].append(measure_model(name, s, workdir, results["matmul_peak"]["tflops"], note))
    if s.cli:
        results["cli"] = measure_cli(s, note)
    results["targets"] = evaluate_targets(results)
    # CPU seconds next to wall seconds tell how much of the machine this run had (shared CI runners).
    results["meta"]["wall_s"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):  # over the run, not before it
        results["meta"]["load_average"] = list(os.getloadavg())
    results["meta"]["cpu_s"] = None if resource is None else sum(
        resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return results
