"""Ten demo-model prompts three ways: a shell loop of `dream gen` calls, one `dream gen --prompts FILE`,
and the same with `--batch-size 10` (128x128, 20 steps: the demo preset).

Prints wall time and CPU time (user + system of the child processes) of each, and how many times
faster than the shell loop each is. The target is >= 5x for the prompt file. On a machine whose
cores are shared with other work, wall times swing with that work's load: CPU times say more there.
Each image of the three ways is also compared (same seeds, so the same pictures up to rounding).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "a red circle on a blue background", "a green square on a white background",
    "a yellow triangle on a black background", "a blue circle on a yellow background",
    "a white cross on a red background", "a purple square on a green background",
    "an orange triangle on a blue background", "a black circle on a white background",
    "a cyan square on a red background", "a pink triangle on a grey background",
]


def dream_command() -> list[str]:
    """The installed `dream` script next to this Python, else `python -m dreamcli`."""
    script = Path(sys.executable).with_name("dream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dreamcli"]


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all descendants) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def variants(work: Path, prompt_file: Path, run: int) -> dict[str, tuple[list[str], Path]]:
    """Name -> (command, output folder) for one run."""
    dream = shlex.join(dream_command())
    loop_out, file_out, batch_out = (work / f"{name}-{run}" for name in ("loop", "file", "batch"))
    loop = (f"while IFS= read -r p; do {dream} gen \"$p\" -s 1 -q -o {shlex.quote(str(loop_out))}; "
            f"done < {shlex.quote(str(prompt_file))}")
    gen_file = [*dream_command(), "gen", "--prompts", str(prompt_file), "-s", "1", "-q"]
    return {
        "shell loop of 10 `dream gen`": (["bash", "-c", loop], loop_out),
        "dream gen --prompts FILE": ([*gen_file, "-o", str(file_out)], file_out),
        "... --batch-size 10": ([*gen_file, "--batch-size", "10", "-o", str(batch_out)], batch_out),
    }


def largest_difference(folders: list[Path]) -> float:
    """The largest mean absolute pixel difference (0-255) between the same image made two ways."""
    import numpy as np
    from PIL import Image

    def load(folder):
        return [np.asarray(Image.open(p).convert("RGB"), np.int16) for p in sorted(folder.glob("*.png"))]

    reference = load(folders[0])
    worst = 0.0
    for folder in folders[1:]:
        images = load(folder)
        assert len(images) == len(reference), f"{folder} holds {len(images)} images, not {len(reference)}"
        worst = max([worst] + [float(np.abs(a - b).mean()) for a, b in zip(reference, images, strict=True)])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="rounds of the three ways, interleaved (median)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the timed commands (default: unset)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dream-batching-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DREAMCLI_HOME": str(work / "home")}  # the demo preset
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")
    times: dict[str, list[tuple[float, float]]] = {}
    try:
        for run in range(args.runs):
            ways = variants(work, prompt_file, run)
            order = list(ways)[run % 3:] + list(ways)[:run % 3]  # rotate, so no way always runs first
            for name in order:
                argv, _ = ways[name]
                times.setdefault(name, []).append(timed(argv, env))
            difference = largest_difference([folder for _, folder in ways.values()])
        print(f"{len(PROMPTS)} prompts, demo model 128x128, 20 steps, {args.runs} run(s), "
              f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
        loop_wall, loop_cpu = (statistics.median(t[i] for t in times[next(iter(times))]) for i in (0, 1))
        print(f"{'':32}{'wall s':>9}{'CPU s':>9}{'x wall':>9}{'x CPU':>8}")
        for name, samples in times.items():
            wall, cpu = (statistics.median(t[i] for t in samples) for i in (0, 1))
            print(f"{name:32}{wall:9.1f}{cpu:9.1f}{loop_wall / wall:9.2f}{loop_cpu / cpu:8.2f}")
        print(f"largest mean pixel difference between the ways: {difference:.3f} (0-255)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
