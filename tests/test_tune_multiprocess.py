"""Data-parallel dream tune: two CPU processes under torchrun (as accelerate launch starts them) write one LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from safetensors import safe_open

from test_tune import subject_images


def test_two_cpu_processes_train_one_lora(tiny, tmp_path):
    outdir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dreamcli", "tune", "-m", str(tiny["sd1"]), "--images", str(subject_images(tmp_path / "subject")),
        "--class", "shape", "-o", str(outdir), "--steps", "4", "--class-images", "2", "--checkpoint-every", "2",
        "--device", "cpu", "--validation-images", "1",
    ]
    # One thread each: two processes on two cores; the inherited env keeps the test session's offline home.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = outdir / "pytorch_lora_weights.safetensors"
    assert done.stdout.splitlines() == [str(weights)]  # only the main process prints results
    assert sorted(p.name for p in outdir.glob("*.safetensors")) == [weights.name]
    with safe_open(str(weights), "pt") as f:
        assert any(".to_q.lora.down.weight" in k for k in f.keys())
    record = json.loads((outdir / "tune_config.json").read_text())
    assert record["num_processes"] == 2 and record["status"] == "finished" and record["step"] == 4
    steps = [json.loads(line)["step"] for line in (outdir / "loss_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one log, written once, not once per process
    # Each process saved its own random state into the shared checkpoint.
    names = {p.name for p in (outdir / "checkpoints" / "step-000004").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin"} <= names
