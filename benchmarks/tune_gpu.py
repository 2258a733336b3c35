"""dream tune's GPU memory and speed on full-size pipelines: SD1.5, SDXL, SD3.5 Medium and Flux.1 dev shaped.

Run (a CUDA machine): python benchmarks/tune_gpu.py OUTDIR [--cases NAME,...] [--steps 8] [--budget 300]
Check the harness on a CPU: python benchmarks/tune_gpu.py OUTDIR --tiny --device cpu

Each case builds the shape with random weights (dreamcli.bench.shapes; SD3.5 and Flux with the whole T5-XXL,
24 layers) on the GPU, moves it to CPU memory as a load from disk leaves it, and runs dream's real training
function, dreamcli.training.tune, on it: batch 1 with prior preservation (one instance and one class picture a
step), centre crops (latents and prompts cached), rank 4, one validation picture of 4 steps at the end. Only
the loading is replaced: the folders would be 7 to 35 GB. The weights' values do not change time or memory.

For each case it reports the allocator's peaks (torch.cuda.max_memory_allocated and max_memory_reserved; add
about 0.5 GB of CUDA context for what nvidia-smi shows) in three phases: set-up (placing the models, caching
latents and prompts), the training steps, and the end (checkpoint, LoRA file, validation picture); and the
steady training speed in steps/s. Writes OUTDIR/tune_gpu.json and prints one line per case.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tune_speed import subject  # noqa: E402  (beside this file: the same pictures to learn from)

# name: (shape, resolution, tune settings beyond the common ones)
CASES = {  # in the order they run: what the README's memory table needs most comes first
    "flux-gc-fp8": ("flux-dev", 1024, {"gradient_checkpointing": True, "quantize": "fp8"}),
    "flux-gc-fp8-offload": ("flux-dev", 1024, {"gradient_checkpointing": True, "quantize": "fp8", "offload": True}),
    "sd35m-gc": ("sd35-medium", 1024, {"gradient_checkpointing": True}),
    "sd35m-gc-offload": ("sd35-medium", 1024, {"gradient_checkpointing": True, "offload": True}),
    "sdxl-gc": ("sdxl", 1024, {"gradient_checkpointing": True}),
    "sdxl": ("sdxl", 1024, {}),
    "sdxl-gc-offload": ("sdxl", 1024, {"gradient_checkpointing": True, "offload": True}),
    "sd15": ("sd15", 512, {}),
    "sd15-gc": ("sd15", 512, {"gradient_checkpointing": True}),
    "flux-gc": ("flux-dev", 1024, {"gradient_checkpointing": True}),
    "sd35m": ("sd35-medium", 1024, {}),
    "flux-fp8": ("flux-dev", 1024, {"quantize": "fp8"}),
}
TINY = {"sd1": "tiny-sd", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}


class Phases:
    """The allocator's peaks per phase: the training phase starts when tune reports step 0."""

    def __init__(self, torch, device: str):
        self.torch, self.cuda = torch, device.startswith("cuda")
        self.peaks: dict[str, dict] = {}
        self.times: list[tuple[int, float]] = []

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def close(self, phase: str) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peaks[phase] = {
                "allocated_gb": round(self.torch.cuda.max_memory_allocated() / 1e9, 2),
                "reserved_gb": round(self.torch.cuda.max_memory_reserved() / 1e9, 2),
            }
        self.reset()

    def on_progress(self, stage: str, done: int, total: int, **info) -> None:
        if stage != "training":
            return
        if "setup" not in self.peaks:
            self.close("setup")
        self.times.append((done, time.perf_counter()))
        if done == total:
            self.close("training")

    def rate(self) -> float | None:
        steady = self.times[len(self.times) // 3:]  # after the allocator's and kernels' warm-up
        if len(steady) < 2:
            return None
        (first, t0), (last, t1) = steady[0], steady[-1]
        return round((last - first) / (t1 - t0), 3)


def run_case(name: str, shape_name: str, resolution: int, extra: dict, args, tmp: Path) -> dict:
    import torch

    import dreamcli.engine as engine
    from dreamcli.bench import shapes
    from dreamcli.requests import TuneConfig
    from dreamcli.training import tune

    shape = shapes.SHAPES[shape_name]
    if args.tiny:
        shape, resolution = shapes.SHAPES[TINY[shape.family]], 64
    elif shape.t5:
        shape = dataclasses.replace(shape, t5=shapes.T5_XXL)  # the whole encoder: its 9.5 GB is what offload moves
    dtype = torch.bfloat16
    built = time.perf_counter()
    on_gpu = args.device.startswith("cuda")  # CPUs lack some half-precision initialisers
    pipe = shapes.build_pipeline(shape, shapes.make_tokenizer(tmp / f"{name}-tok"), args.device if on_gpu else "cpu",
                                 dtype if on_gpu else None)
    pipe.to("cpu", dtype)  # where from_pretrained leaves a pipeline
    built = time.perf_counter() - built
    # The model reference tune checks (family, files) before loading: a tiny folder of the same family.
    reference = shapes.saved_shape(TINY[shape.family], tmp / "refs", "fp32")
    real_loader = engine.load_base_pipeline
    held = [pipe]  # released after the run, so that the next case starts with an empty GPU
    del pipe
    engine.load_base_pipeline = lambda source, options, torch_dtype, device="cpu": held[0]
    phases = Phases(torch, args.device)
    config = TuneConfig(
        instance_data_dir=str(subject(tmp / f"subject-{resolution}", resolution, "cross")), class_word="shape",
        model=str(reference), output_dir=str(tmp / f"run-{name}"), device=args.device,
        class_data_dir=str(subject(tmp / f"class-{resolution}", resolution, "circle")), num_class_images=5,
        max_train_steps=args.steps, checkpointing_steps=args.steps, resolution=resolution, mixed_precision="bf16",
        num_validation_images=1, class_steps=4, **extra,
    )
    try:
        phases.reset()
        started = time.perf_counter()
        result = tune(config, on_progress=phases.on_progress)
        phases.close("end")
        seconds = time.perf_counter() - started
    finally:
        engine.load_base_pipeline = real_loader
        held.clear()
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    peaks = phases.peaks
    overall = max((p["reserved_gb"] for p in peaks.values()), default=None)
    return {
        "case": name, "shape": shape.name, "resolution": resolution, "settings": extra,
        "steps_per_second": phases.rate(), "peaks": peaks, "peak_reserved_gb": overall,
        "training_reserved_gb": peaks.get("training", {}).get("reserved_gb"),
        "seconds": round(seconds, 1), "build_seconds": round(built, 1), "final_loss": result.final_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: checks the harness, not the figures")
    parser.add_argument("--budget", type=float, default=300, help="seconds; no case starts after this")
    args = parser.parse_args()
    from dreamcli.bench.runner import device_name, quiet_libraries

    quiet_libraries()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    from dreamcli.training.dreambooth import _versions

    report = {"date": time.strftime("%Y-%m-%d"), "device": device_name(args.device), "versions": _versions(),
              "steps": args.steps, "tiny": args.tiny, "cases": []}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            if time.perf_counter() - began > args.budget:
                report["cases"].append({"case": name, "skipped": "out of time"})
                continue
            shape_name, resolution, extra = CASES[name]
            try:
                row = run_case(name, shape_name, resolution, extra, args, Path(tmp))
            except Exception as error:  # one failing case must not lose the others' figures
                row = {"case": name, "error": f"{type(error).__name__}: {error}"[:2000]}
                import traceback

                traceback.print_exc()
            report["cases"].append(row)
            print(json.dumps(row), flush=True)
            (out / "tune_gpu.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
