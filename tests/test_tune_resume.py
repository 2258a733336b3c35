"""dream tune --resume gives the weights of a run that never stopped: after a clean stop, Ctrl-C (SIGINT)
or SIGKILL, with the README walkthrough's settings (the demo preset's [tune] table: prior preservation,
text-encoder adapters, --layers all, batch 2) on the tiny SD1 model.

Weights are compared with torch.equal, not a tolerance: both runs do the same float operations in the same
order on the same CPU, so any difference is a different random draw or batch, and one shifted draw already
moves the adapters by ~1e-3 after a step; a tolerance would only hide how far off a run is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_tune import subject_images

# 3 subject pictures and 6 class pictures at batch 2: 3 batches an epoch, so steps 4, 5, 7 and 8 stop
# mid-epoch, where a resumed run must start a data iterator the unbroken run is already inside.
CLASS_IMAGES = 6
WEIGHTS = "pytorch_lora_weights.safetensors"


def walkthrough_config(tiny, images: Path, outdir: Path, steps: int, **flags):
    """The README walkthrough's `dream tune --preset demo ...` with the tiny model in place of the demo one."""
    from dreamcli.cli.tune import tune_config_from

    merged = {"images": str(images), "class_word": "shape", "prompt": "a sks shape", "class_prompt": "a shape",
              "outdir": str(outdir), "steps": steps, "class_images": CLASS_IMAGES, "validation_images": 0,
              "checkpoint_every": 3, **flags}
    config = tune_config_from(merged, {"preset": "demo", "model": str(tiny["sd1"]), "device": "cpu"})
    # What the walkthrough trains; the step count and class-image count are the test's.
    assert (config.lora_layers, config.train_text_encoder, config.with_prior_preservation) == ("all", True, True)
    assert (config.train_batch_size, config.rank) == (2, 8)
    return config


def losses(outdir: Path) -> list[dict]:
    """The loss log without its wall-clock seconds."""
    lines = (outdir / "loss_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def assert_same_run(ours: Path, reference: Path) -> None:
    assert losses(ours) == losses(reference)
    mine, theirs = load_file(ours / WEIGHTS), load_file(reference / WEIGHTS)
    assert mine.keys() == theirs.keys()
    assert any(k.startswith("text_encoder.") for k in mine) and any(".conv1." in k for k in mine)
    different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    worst = max((float((mine[k] - theirs[k]).abs().max()) for k in different), default=0.0)
    assert not different, f"{len(different)} of {len(mine)} tensors differ, by up to {worst:.3g}"


def record(outdir: Path) -> dict:
    return json.loads((outdir / "tune_config.json").read_text())


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return subject_images(tmp_path_factory.mktemp("subject") / "cross")


@pytest.fixture(scope="module")
def unbroken(tiny, subject, tmp_path_factory):
    """Straight runs, keyed by (steps, extra flags), made once each."""
    from dreamcli.training import tune

    made = {}

    def run(steps: int, **flags) -> Path:
        key = (steps, tuple(sorted(flags.items())))
        if key not in made:
            outdir = tmp_path_factory.mktemp("unbroken") / "run"
            tune(walkthrough_config(tiny, subject, outdir, steps, **flags))
            made[key] = outdir
        return made[key]

    return run


@pytest.mark.parametrize("steps, flags", [
    (4, {}),  # resumes at step 4: mid-epoch, checkpoint every 3 does not divide 4
    (3, {"grad_accum": 2}),  # step 3 starts with batch 0 of epoch 1 (step 2 was its last batch alone)
    (4, {"random_crop": True}),  # crops and flips made while reading, one batch ahead of training
])
def test_two_stage_run_equals_an_unbroken_one(tiny, subject, tmp_path, unbroken, steps, flags):
    from dreamcli.training import tune

    outdir = tmp_path / "run"
    first = tune(walkthrough_config(tiny, subject, outdir, steps, **flags))
    assert first.steps == steps
    config = walkthrough_config(tiny, subject, outdir, 2 * steps, resume=True, **flags)
    result = tune(config)
    assert result.steps == 2 * steps and record(outdir)["status"] == "finished"
    assert [r["step"] for r in losses(outdir)] == list(range(1, 2 * steps + 1))
    assert_same_run(outdir, unbroken(2 * steps, **flags))


def test_class_images_made_or_cached_do_not_change_the_run(tiny, subject, tmp_path, unbroken):
    """The first run made the class images (a cache miss), a second one reads them (a hit): same weights."""
    from dreamcli.training import tune

    config = walkthrough_config(tiny, subject, tmp_path / "run", 2, class_images=CLASS_IMAGES + 1)
    tune(config)  # makes the 7th class picture
    again = tune(replace(config, output_dir=str(tmp_path / "again")))
    assert_same_run(again.outdir, tmp_path / "run")


def wait_for(process: subprocess.Popen, ready, what: str, seconds: float = 240, poll: float = 0.01) -> None:
    """Wait until `ready()` while the process runs; fail naming `what` if it ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within the time allowed ({seconds:.0f} s)")
        time.sleep(poll)


def dream_tune(tiny, subject: Path, outdir: Path, steps: int, *extra: str) -> list[str]:
    """`python -m dreamcli tune` with the walkthrough's flags, as a user types it."""
    return [
        sys.executable, "-m", "dreamcli", "tune", "--preset", "demo", "-m", str(tiny["sd1"]), "--device", "cpu",
        "--images", str(subject), "--class", "shape", "--prompt", "a sks shape", "--class-prompt", "a shape",
        "-o", str(outdir), "--steps", str(steps), "--class-images", str(CLASS_IMAGES), "--checkpoint-every", "4",
        "--validation-images", "0", "-q", *extra,
    ]


def start_and_stop_after_first_checkpoint(command: list[str], outdir: Path, sig: int) -> tuple[int, int, str]:
    """Start a run, wait for its first checkpoint folder (renamed into place when complete), send `sig`;
    returns the process's pid, exit code and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = outdir / "checkpoints" / "step-000004"
    wait_for(process, first.is_dir, "its first checkpoint")
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.pid, process.returncode, stderr


STEPS = 40  # a run is still going when its first checkpoint (step 4) appears: 36 steps, seconds, to stop it


def test_a_run_killed_with_sigkill_resumes_to_the_unbroken_runs_weights(tiny, subject, tmp_path, unbroken):
    from dreamcli.training.rundir import checkpoints, was_killed

    outdir = tmp_path / "run"
    command = dream_tune(tiny, subject, outdir, STEPS)
    pid, code, _ = start_and_stop_after_first_checkpoint(command, outdir, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (outdir / WEIGHTS).exists(), "the run finished before it was killed: raise STEPS"
    # Nothing could write after SIGKILL: the record still says running, with a pid that is gone.
    left = record(outdir)
    assert left["status"] == "running" and left["pid"] == pid and was_killed(left)
    newest = checkpoints(outdir)[-1][0]
    # The record names a checkpoint only after it is in place, so a kill between the two leaves it one behind.
    assert newest % 4 == 0 and left.get("checkpoint_step", 0) in (newest - 4, newest)

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.splitlines() == [str(outdir / WEIGHTS)]
    after = record(outdir)
    assert after["status"] == "finished" and after["step"] == STEPS and not was_killed(after)
    assert_same_run(outdir, unbroken(STEPS, checkpoint_every=4))


def test_ctrl_c_finishes_the_step_saves_and_resumes_to_the_unbroken_runs_weights(tiny, subject, tmp_path, unbroken):
    from dreamcli.training.rundir import checkpoints

    outdir = tmp_path / "run"
    command = dream_tune(tiny, subject, outdir, STEPS)
    _, code, stderr = start_and_stop_after_first_checkpoint(command, outdir, signal.SIGINT)
    assert code == 130, stderr[-2000:]
    left = record(outdir)
    assert left["status"] == "interrupted"
    # The step it was in was finished and saved: the newest checkpoint is the last logged step.
    newest = checkpoints(outdir)[-1][0]
    assert left["step"] == newest == losses(outdir)[-1]["step"]
    assert f"checkpoint at step {newest} saved" in stderr

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(outdir, unbroken(STEPS, checkpoint_every=4))


def test_a_failed_run_says_failed_with_its_error(tiny, subject, tmp_path, monkeypatch):
    import dreamcli.training.dreambooth as dreambooth
    from dreamcli.training import tune

    calls = []

    def breaks_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (a stand-in)")
        return real(*args, **kwargs)

    real = dreambooth.dreambooth_loss
    monkeypatch.setattr(dreambooth, "dreambooth_loss", breaks_at_step_3)
    outdir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a stand-in"):
        tune(walkthrough_config(tiny, subject, outdir, 6, checkpoint_every=2))
    left = record(outdir)
    assert left["status"] == "failed" and left["error"] == "RuntimeError: out of memory (a stand-in)"
    assert left["step"] == 2 and left["checkpoint_step"] == 2


def test_ctrl_c_while_class_images_are_made_says_interrupted(tiny, subject, tmp_path):
    from dreamcli.training import tune

    def stop(stage, done, total, **info):
        if stage == "class images" and done > 0:
            raise KeyboardInterrupt

    outdir = tmp_path / "run"
    # A class prompt no other test uses, so its pictures are not cached yet.
    config = walkthrough_config(tiny, subject, outdir, 2, class_prompt="a shape, never cached")
    with pytest.raises(KeyboardInterrupt):
        tune(config, on_progress=stop)
    assert record(outdir)["status"] == "interrupted" and record(outdir)["step"] == 0


def test_a_torn_last_loss_line_is_dropped_on_resume(tmp_path):
    from dreamcli.training.rundir import truncate_loss_log

    log = tmp_path / "loss_log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    truncate_loss_log(tmp_path, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def test_a_running_record_counts_as_killed_only_when_its_process_is_gone():
    import socket

    from dreamcli.training.rundir import was_killed

    here = {"status": "running", "host": socket.gethostname()}
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert was_killed({**here, "pid": int(gone.stdout)})
    assert not was_killed({**here, "pid": os.getpid()})  # this very process
    assert not was_killed({**here, "pid": int(gone.stdout), "status": "finished"})
    assert not was_killed({**here, "pid": int(gone.stdout), "host": "another-machine"})  # cannot tell from here
