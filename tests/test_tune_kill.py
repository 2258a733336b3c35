"""dream tune survives kill -9: killed mid-run or while it writes a checkpoint, `--resume` continues from the
newest complete checkpoint, skips the half-written one, and ends with the weights of a run that never stopped.

The processes are real `python -m dreamcli tune` runs killed with SIGKILL: by the test, and by themselves
inside a checkpoint through the DREAMCLI_TEST_KILL_IN_CHECKPOINT hook (with half the files written).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamcli.training import rundir
from test_tune import subject_images
from test_tune_resume import CLASS_IMAGES, WEIGHTS, assert_same_run, losses, record, wait_for, walkthrough_config

STEPS, EVERY = 8, 2


def fake_checkpoint(outdir: Path, step: int, sealed: bool = True) -> Path:
    """A checkpoint folder as save_checkpoint leaves it, with two small files."""
    folder = rundir.checkpoint_dir(outdir, step)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True)
    (tmp / WEIGHTS).write_bytes(b"w" * 100)
    (tmp / "optimizer.bin").write_bytes(b"o" * 300)
    if not sealed:
        return tmp
    rundir.seal_checkpoint(tmp, step)
    rundir.publish_checkpoint(tmp, folder)
    return folder


def test_a_checkpoint_counts_only_when_whole(tmp_path):
    two, four = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert rundir.checkpoints(tmp_path) == [(2, two), (4, four)]
    marker = json.loads((four / rundir.COMPLETE_NAME).read_text())
    assert marker == {"step": 4, "files": {WEIGHTS: 100, "optimizer.bin": 300}}
    # A file cut short after the marker was written (a power cut before the data reached the disk).
    (four / "optimizer.bin").write_bytes(b"o" * 10)
    assert rundir.checkpoints(tmp_path) == [(2, two)]
    (four / "optimizer.bin").write_bytes(b"o" * 300)
    (four / rundir.COMPLETE_NAME).unlink()  # no marker: never finished
    assert rundir.checkpoints(tmp_path) == [(2, two)]


def test_what_a_killed_run_leaves_is_cleared_and_named(tmp_path):
    two = fake_checkpoint(tmp_path, 2)
    writing = fake_checkpoint(tmp_path, 4, sealed=False)  # killed while writing step 4
    deleting = tmp_path / "checkpoints" / "step-000001.old"  # killed while pruning step 1
    deleting.mkdir()
    unsealed = rundir.checkpoint_dir(tmp_path, 3)  # a named folder with no marker
    unsealed.mkdir()
    assert rundir.unfinished_checkpoints(tmp_path) == [deleting, unsealed, writing]
    assert rundir.remove_unfinished(tmp_path) == [unsealed, writing]  # the half-written ones, to say so
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [two.name]


def test_a_second_checkpoint_of_one_step_replaces_the_first_and_pruning_leaves_no_remains(tmp_path):
    fake_checkpoint(tmp_path, 2)
    again = fake_checkpoint(tmp_path, 2)  # e.g. Ctrl-C right after the step-2 checkpoint
    assert rundir.checkpoints(tmp_path) == [(2, again)]
    for step in (4, 6, 8):
        fake_checkpoint(tmp_path, step)
    rundir.prune_checkpoints(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000004", "step-000006", "step-000008"]


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return subject_images(tmp_path_factory.mktemp("subject") / "cross")


def dream_tune(tiny, subject: Path, outdir: Path, *extra: str) -> list[str]:
    """`python -m dreamcli tune` with the README walkthrough's settings on the tiny model."""
    return [
        sys.executable, "-m", "dreamcli", "tune", "--preset", "demo", "-m", str(tiny["sd1"]), "--device", "cpu",
        "--images", str(subject), "--class", "shape", "--prompt", "a sks shape", "--class-prompt", "a shape",
        "-o", str(outdir), "--steps", str(STEPS), "--class-images", str(CLASS_IMAGES),
        "--checkpoint-every", str(EVERY), "--validation-images", "0", *extra,
    ]


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != rundir.TEST_KILL_ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def logged_steps(outdir: Path) -> list[int]:
    return [r["step"] for r in rundir.read_losses(outdir)]


def test_a_run_killed_mid_checkpoint_then_mid_run_resumes_to_the_unbroken_weights(tiny, subject, tmp_path, cli):
    from dreamcli.training import tune

    outdir = tmp_path / "run"
    command = dream_tune(tiny, subject, outdir)

    # 1. Killed inside the step-6 checkpoint: the LoRA file is written, the optimizer and RNG states are not.
    first = subprocess.run(command, capture_output=True, text=True, timeout=300,
                           env=environment(**{rundir.TEST_KILL_ENV: "6"}))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    half = outdir / "checkpoints" / "step-000006.tmp"
    assert (half / WEIGHTS).is_file() and not (half / "optimizer.bin").exists()
    assert [step for step, _ in rundir.checkpoints(outdir)] == [2, 4]
    assert logged_steps(outdir) == [1, 2, 3, 4, 5, 6]
    assert record(outdir)["status"] == "running" and rundir.was_killed(record(outdir))

    # 2. Resumed from step 4, skipping the half-written step 6, and killed by us after step 5, mid-run.
    second = subprocess.Popen([*command, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=environment())
    deadline = time.monotonic() + 240  # for both waits together
    # The log is cut back to step 4 when the run starts, then grows: kill it once it has done step 5.
    for done in (lambda steps: steps[-1:] == [4], lambda steps: steps[-1:] >= [5]):
        wait_for(second, lambda done=done: done(logged_steps(outdir)), "step 5", deadline - time.monotonic(), 0.005)
    second.send_signal(signal.SIGKILL)
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL
    assert "skipped the half-written checkpoint step-000006.tmp" in stderr
    assert "resumed from" in stderr and "at step 4" in stderr
    assert not half.exists() and not (outdir / WEIGHTS).exists()

    # 3. Resumed again (in this process, to save a start-up): it finishes, with every step logged once and
    # the weights of an unbroken run.
    third = cli(*command[3:], "--resume")
    assert third.exit_code == 0, third.stderr[-2000:]
    assert third.stdout.splitlines() == [str(outdir / WEIGHTS)]
    assert record(outdir)["status"] == "finished" and logged_steps(outdir) == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (outdir / "checkpoints").iterdir()) == [
        "step-000004", "step-000006", "step-000008"]
    assert (outdir / "loss.png").is_file()

    unbroken = tmp_path / "unbroken"
    tune(walkthrough_config(tiny, subject, unbroken, STEPS, checkpoint_every=EVERY))
    assert losses(outdir) == losses(unbroken)
    assert_same_run(outdir, unbroken)


def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(tiny, tmp_path):
    """Killed while writing its weights (after the last checkpoint): --resume finishes it, same weights."""
    from dataclasses import replace

    import torch
    from safetensors.torch import load_file

    from dreamcli.training import tune
    from test_tune import config_for

    config = config_for(tiny, tmp_path, num_validation_images=1)
    tune(config)
    outdir = Path(config.output_dir)
    weights = outdir / "pytorch_lora_weights.safetensors"
    before = {k: v.clone() for k, v in load_file(weights).items()}
    state = json.loads((outdir / "tune_config.json").read_text())
    state["status"], state["pid"] = "running", 999999  # as a kill while writing the weights leaves it
    (outdir / "tune_config.json").write_text(json.dumps(state))
    torn = weights.read_bytes()[:100]
    weights.unlink()  # not cut in place: safetensors maps the file, and a shrunk mapping is a bus error
    weights.write_bytes(torn)
    result = tune(replace(config, resume=True))
    assert result.steps == config.max_train_steps
    after = load_file(weights)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((outdir / "tune_config.json").read_text())["status"] == "finished"
