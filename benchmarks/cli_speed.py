"""Wall time of `dream --help`, a tiny-model and a demo-model `dream gen` (median of 5, start-up included).

The demo-model `dream gen` is compared with the time Python takes only to import diffusers'
StableDiffusionPipeline, in the same run: the target is no more than 1.5 s above it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dream_command() -> list[str]:
    """The installed `dream` script next to this Python, else `python -m dreamcli`."""
    script = Path(sys.executable).with_name("dream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dreamcli"]


def median_wall(argv: list[str], runs: int, env: dict) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def build_tiny_model(folder: Path) -> Path:
    """The tests' tiny SD1 pipeline (random weights, 32 px) saved as a diffusers folder."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    pipe = tiny_models.build_sd1(tiny_models.write_tokenizer(folder / "tokenizer"))
    pipe.save_pretrained(folder / "sd1")
    return folder / "sd1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the timed commands (default: unset)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dream-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DREAMCLI_HOME": str(work / "home")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        model = build_tiny_model(work)
        dream = dream_command()
        rows = [
            ("dream --help", dream + ["--help"]),
            (f"dream gen (tiny SD1, 32 px, {args.steps} steps)",
             dream + ["gen", "-m", str(model), "a red circle", "--steps", str(args.steps), "-s", "1",
                      "-o", str(work / "out"), "-q"]),
            ("dream gen (demo model, 128 px, 20 steps)",
             dream + ["gen", "a red circle on a blue background", "-s", "1", "-o", str(work / "out"), "-q"]),
            ("python -c 'from diffusers import StableDiffusionPipeline'",
             [sys.executable, "-c", "from diffusers import StableDiffusionPipeline"]),
        ]
        print(f"{'command':58} {'median s':>9}   runs")
        medians = {}
        for label, argv in rows:
            med, times = median_wall(argv, args.runs, env)
            medians[label] = med
            print(f"{label:58} {med:9.3f}   " + " ".join(f"{t:.2f}" for t in times))
        demo, reference = medians[rows[2][0]], medians[rows[3][0]]
        print(f"demo dream gen minus the diffusers import: {demo - reference:+.2f} s (target <= +1.50 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
