"""`dream bench`: time dreamcli's generation path against plain diffusers, and the command line itself."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dreamcli.cli import common
from dreamcli.cli.common import emit, hint, user_errors
from dreamcli.errors import InputError


def bench(
    device: common.Device = None,
    dtype: common.Dtype = None,
    shapes: Annotated[str | None, typer.Option(
        "--shapes", help="Comma-separated: demo, sd15, sd21, sdxl, sd35-medium, flux-dev, tiny-sd, tiny-sdxl, "
        "tiny-sd3, tiny-flux, or none. Default: demo,sd15,sd21,sdxl on a GPU; demo,tiny-sd,tiny-sdxl on a CPU. "
        "sd35-medium and flux-dev (bf16 on a GPU; about 8 and 25 GB of disk) run only when named.")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Denoising steps per timed run (step 1 is not timed). Default 20 GPU, 5 CPU.")] = None,
    warmup: Annotated[int | None, typer.Option(
        "--warmup", help="Steps of the untimed run before each timed one.")] = None,
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes", help="Comma-separated batch sizes (default 1,8).")] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="Also time dreamcli with --compile (default: on a GPU).")] = None,
    offload: Annotated[bool | None, typer.Option(
        "--offload/--no-offload",
        help="Also time dreamcli with --offload, smallest batch (default: on a GPU).")] = None,
    fp8: Annotated[bool | None, typer.Option(
        "--fp8/--no-fp8", help="Also time SD3 and Flux shapes with the transformer's weights stored in fp8 "
        "(diffusers' layerwise casting), through both paths (default: on a GPU).")] = None,
    cli: Annotated[bool, typer.Option(
        "--cli/--no-cli", help="Also time dream --help, a demo dream gen, and a shell loop vs --prompts.")] = True,
    loop_prompts: Annotated[int | None, typer.Option(
        "--loop-prompts", help="Prompts in the shell loop vs --prompts comparison (default 10).")] = None,
    runs: Annotated[int | None, typer.Option(
        "--runs", help="Repeats of each short command; the median counts (default 3).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small and short (CI): tiny-sd and demo, 3 steps, batches 1,2, 3 loop prompts.")] = False,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", help="Where the shape pipelines are saved and reused (default: dreamcli's cache).")] = None,
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="JSON results file (default: dream-bench-DATE.json here).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON results instead of the table.")] = False,
    quiet: common.Quiet = False,
) -> None:
    """Benchmark generation: dreamcli vs plain diffusers on models shaped like SD1.5 to Flux, plus CLI wall times."""
    with user_errors():
        from dreamcli.bench.settings import BenchConfig, parse_batch_sizes, parse_shapes

        config = BenchConfig(
            device=device or "auto", dtype=dtype or "auto",
            shapes=None if shapes is None else parse_shapes(shapes), steps=steps, warmup_steps=warmup,
            batch_sizes=None if batch_sizes is None else parse_batch_sizes(batch_sizes),
            compile=compile, offload=offload, fp8=fp8, cli=cli, loop_prompts=loop_prompts, runs=runs, quick=quick,
        )
        out = out or Path(f"dream-bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
        if out.is_dir():
            raise InputError(f"--out {out} is a folder: give a file name, e.g. {out / 'bench.json'}")

        from dreamcli.bench.report import table, write_json
        from dreamcli.bench.runner import run_bench
        from dreamcli.config import cache_dir

        results = run_bench(config, workdir or cache_dir() / "bench", lambda text: hint(text, quiet))
        write_json(results, out)
    emit(json.dumps(results) if json_out else table(results))
    hint(f"results written to {out}", quiet)
