"""`dream gen` under torchrun (as `accelerate launch` starts it): two CPU processes share a prompt file, and
the folder ends up as a single process would leave it: same names, same pixels, each image once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import pixels, written

PROMPTS = (
    '{"prompt": "a red circle", "seed": 5, "num_images": 2}\n'
    '{"prompt": "a green star", "num_images": 3}\n'  # a random base seed, drawn once for both processes
    "a blue square\n"
    '{"prompt": "a white cross", "seed": 9, "width": 48}\n'
    '{"prompt": "a black ring", "seed": 1}\n'
)


def names(paths) -> list[str]:
    return [str(p).rsplit("/", 1)[-1] for p in paths]


def test_two_processes_write_what_one_would(tiny, tmp_path, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):  # numbering continues after what the folder already holds
        folder.mkdir()
        (folder / "00007-3-old.png").write_bytes(b"old")
    args = ["gen", "-m", str(tiny["sd1"]), "--prompts", str(prompts), "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--json"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dreamcli", *args, "-o", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    green_seeds = [d["seed"] for d in lines if d["prompt"] == "a green star"]
    base = green_seeds[0]
    assert green_seeds == [base, base + 1, base + 2]  # one random base seed, though the images span processes

    # The same prompts with the drawn seeds written in, run by one process: the same folder results.
    blue_seed = next(d["seed"] for d in lines if d["prompt"] == "a blue square")
    seeded = tmp_path / "seeded.txt"
    seeded.write_text(PROMPTS.replace('"num_images": 3}', f'"num_images": 3, "seed": {base}}}').replace(
        "a blue square\n", f'{{"prompt": "a blue square", "seed": {blue_seed}}}\n'))
    single = cli(*[str(seeded) if a == str(prompts) else a for a in args], "-o", one)
    assert single.exit_code == 0, single.stderr
    single_lines = [json.loads(line) for line in single.stdout.splitlines()]
    got = names(d["path"] for d in lines)
    assert got == names(d["path"] for d in single_lines)  # same names, in the same order on stdout
    assert got[:3] == ["00008-5-a-red-circle.png", "00009-6-a-red-circle.png", f"00010-{base}-a-green-star.png"]
    assert got[-2:] == ["00014-9-a-white-cross.png", "00015-1-a-black-ring.png"]
    assert names(written(two)) == sorted(got + ["00007-3-old.png"])  # each image once, nothing else
    for name in got:
        assert np.abs(pixels(one / name) - pixels(two / name)).mean() < 1
    assert Image.open(two / got[-2]).size == (48, 32)
    # Exactly one summary, from the main process.
    summaries = [ln for ln in done.stderr.splitlines() if "image(s) in" in ln]
    assert len(summaries) == 1 and summaries[0].startswith("8 image(s) in") and "on 2 processes" in summaries[0]


def test_numbered_save_never_overwrites(tmp_path):
    from dreamcli.io.outputs import save_atomic

    squatter = tmp_path / "00004-1-x.png"
    squatter.write_bytes(b"mine")
    first = save_atomic(Image.new("RGB", (8, 8), "red"), tmp_path, 1, "x", "png", counter=4)
    second = save_atomic(Image.new("RGB", (8, 8), "blue"), tmp_path, 1, "x", "png", counter=2)
    assert squatter.read_bytes() == b"mine"
    assert (first.name, second.name) == ("00005-1-x.png", "00002-1-x.png")  # the given counter, or the next free
    assert pixels(first)[0, 0].tolist() == [255, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00002-1-x.png", "00004-1-x.png", "00005-1-x.png"]
