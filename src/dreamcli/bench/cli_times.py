"""Wall times of real `dream` commands on the CPU: --help, one demo image, and a shell loop against --prompts."""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dreamcli.errors import DreamError

# Ten different demo-world prompts (colour, shape, background), so the loop and the file do the same work.
PROMPTS = tuple(
    f"a {color} {shape} on a {background} background"
    for color, shape, background in (
        ("red", "circle", "blue"), ("green", "square", "white"), ("yellow", "triangle", "black"),
        ("purple", "circle", "orange"), ("orange", "square", "green"), ("white", "triangle", "red"),
        ("blue", "circle", "yellow"), ("black", "square", "purple"), ("red", "triangle", "green"),
        ("green", "circle", "black"),
    )
)


def dream_command() -> list[str]:
    """The installed `dream` script next to this Python, else `python -m dreamcli`."""
    script = Path(sys.executable).with_name("dream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dreamcli"]


def wall(argv: list[str], env: dict) -> float:
    """Seconds one command takes, start-up included; a failing command is an error naming it."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DreamError(f"benchmark command failed (exit {done.returncode}): {shlex.join(argv)[:200]}: {tail}")
    return seconds


def median_wall(argv: list[str], env: dict, runs: int) -> tuple[float, list[float]]:
    """Median and all of `runs` wall times of one command."""
    times = [wall(argv, env) for _ in range(runs)]
    return statistics.median(times), times


def measure_cli(
    settings, note: Callable[[str], None], dream: list[str] | None = None, reference: list[str] | None = None
) -> dict:
    """The command-line figures, each command in a fresh process on the CPU with the demo models.

    The shell loop and the prompt file run the same prompts with the same settings; their ratio is
    how much loading once saves. `reference` (default: Python importing the diffusers pipeline each demo model
    needs, StableDiffusionPipeline or StableDiffusion3Pipeline) is the floor a `dream gen` start-up is compared
    with. Tests pass stand-ins for both commands.
    """
    dream = dream or dream_command()

    def importing(pipeline: str) -> list[str]:
        return reference or [sys.executable, "-c", f"from diffusers import {pipeline}"]
    scratch = Path(tempfile.mkdtemp(prefix="dream-bench-cli-"))
    # Offline, and a fresh home: the user's config must not swap the demo model for another one.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DREAMCLI_HOME": str(scratch / "home")}
    steps = [] if settings.cli_steps is None else ["--steps", str(settings.cli_steps)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.loop_prompts)]

    def gen_args(outdir: str, preset: str = "demo") -> list[str]:
        return ["gen", "--preset", preset, "--device", "cpu", "-s", "1", *steps, "-o", outdir, "-q"]

    try:
        note(f"cli: dream --help x{settings.runs}")
        help_s, help_runs = median_wall(dream + ["--help"], env, settings.runs)
        note(f"cli: python -c 'from diffusers import StableDiffusionPipeline' x{settings.runs}")
        import_s, _ = median_wall(importing("StableDiffusionPipeline"), env, settings.runs)
        note(f"cli: demo dream gen x{settings.runs}")
        gen_s, gen_runs = median_wall(dream + gen_args(str(scratch / "one")) + [prompts[0]], env, settings.runs)
        note(f"cli: python -c 'from diffusers import StableDiffusion3Pipeline' x{settings.runs}")
        import_sd3_s, _ = median_wall(importing("StableDiffusion3Pipeline"), env, settings.runs)
        note(f"cli: demo-dit dream gen x{settings.runs}")
        dit_args = dream + gen_args(str(scratch / "dit"), "demo-dit") + [prompts[0]]
        dit_s, dit_runs = median_wall(dit_args, env, settings.runs)
        note(f"cli: shell loop of {len(prompts)} dream gen")
        command = shlex.join(dream + gen_args(str(scratch / "loop")))
        loop = f'set -e; for p in {" ".join(shlex.quote(p) for p in prompts)}; do {command} "$p"; done'
        loop_s = wall(["sh", "-c", loop], env)
        note(f"cli: one dream gen --prompts of the same {len(prompts)}")
        prompt_file = scratch / "prompts.txt"
        prompt_file.write_text("\n".join(prompts) + "\n")
        prompts_s = wall(dream + gen_args(str(scratch / "file")) + ["--prompts", str(prompt_file)], env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "command": shlex.join(dream), "runs": settings.runs, "steps": settings.cli_steps,
        "help_s": help_s, "help_runs_s": help_runs,
        "import_diffusers_s": import_s,
        "demo_gen_s": gen_s, "demo_gen_runs_s": gen_runs, "demo_gen_minus_import_s": gen_s - import_s,
        "import_sd3_s": import_sd3_s, "dit_gen_s": dit_s, "dit_gen_runs_s": dit_runs,
        "dit_gen_minus_import_s": dit_s - import_sd3_s,
        "prompts": len(prompts), "loop_s": loop_s, "prompts_file_s": prompts_s, "prompts_speedup": loop_s / prompts_s,
    }
