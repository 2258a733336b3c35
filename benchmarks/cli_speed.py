"""Wall times of `dream` commands: `dream bench --shapes none`, i.e. only the harness's command-line figures.

`dream --help`, a demo-model `dream gen` (next to Python importing diffusers' pipeline alone), and a
shell loop of `dream gen "p"` calls against one `dream gen --prompts` of the same prompts. Any
`dream bench` flag passes through; `--threads N` sets OMP_NUM_THREADS for the timed commands.

    python benchmarks/cli_speed.py                      # median of 3, 10 prompts in the loop
    python benchmarks/cli_speed.py --runs 5 --threads 1 --json
"""

from __future__ import annotations

import argparse
import os
import sys

from dreamcli.cli import main


def run(argv: list[str]) -> None:
    """`dream bench --shapes none ARGV` with --threads N turned into OMP_NUM_THREADS."""
    parser = argparse.ArgumentParser(add_help=False)  # --help goes on to `dream bench`
    parser.add_argument("--threads", type=int)
    args, rest = parser.parse_known_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.argv = ["dream", "bench", "--shapes", "none", *rest]
    main()


if __name__ == "__main__":
    run(sys.argv[1:])
