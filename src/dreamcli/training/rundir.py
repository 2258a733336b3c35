"""The files of one training run in its output folder: config, loss log, checkpoints, weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

CONFIG_NAME = "tune_config.json"
LOSS_LOG_NAME = "loss_log.jsonl"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
CHECKPOINTS = "checkpoints"
VALIDATION = "validation"
KEEP_CHECKPOINTS = 3  # each holds the optimizer state too; older ones are only a fallback
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Settings that change what is learnt: a run may be resumed with other step counts or validation
# settings, but not with another model, subject, rank or batch.
NOT_IDENTITY = {
    "max_train_steps", "checkpointing_steps", "resume", "overwrite", "validation_prompt",
    "validation_steps", "num_validation_images", "export", "device", "num_class_images", "class_steps",
    "class_guidance",
}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON next to its final name and rename, so a reader never sees half a file."""
    from dreamcli.io.outputs import replacing

    with replacing(path, text=True) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_config(outdir: Path) -> dict | None:
    """The tune_config.json of a previous run in this folder (None when there is none)."""
    try:
        return json.loads((outdir / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None


def identity_difference(old: dict, new: dict) -> str | None:
    """The first training setting that differs between two runs' configs, as `name old -> new`."""
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    # In the new config's field order, so the setting the user named comes before those it implies.
    for key in list(new_settings) + sorted(set(old_settings) - set(new_settings)):
        if key in NOT_IDENTITY:
            continue
        if old_settings.get(key) != new_settings.get(key):
            return f"{key} {old_settings.get(key)!r} -> {new_settings.get(key)!r}"
    return None


def checkpoints(outdir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints as (step, folder), oldest first (folders being written end in .tmp)."""
    folder = outdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def checkpoint_dir(outdir: Path, step: int) -> Path:
    """The folder a checkpoint at this step is saved in."""
    return outdir / CHECKPOINTS / f"step-{step:06d}"


def prune_checkpoints(outdir: Path) -> None:
    """Keep the newest KEEP_CHECKPOINTS checkpoints."""
    for _, path in checkpoints(outdir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(path, ignore_errors=True)


def our_files(outdir: Path) -> list[Path]:
    """Everything a previous run wrote into this folder (what --overwrite removes)."""
    names = [CONFIG_NAME, LOSS_LOG_NAME, WEIGHTS_NAME, CHECKPOINTS, VALIDATION]
    found = [outdir / n for n in names if (outdir / n).exists()]
    return found + sorted(outdir.glob("*_kohya.safetensors"))


def remove_previous_run(outdir: Path) -> None:
    """Delete a previous run's files (and only those) before starting over."""
    for path in our_files(outdir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def append_loss(outdir: Path, record: dict) -> None:
    """One JSON line per optimisation step, flushed so a crash keeps every finished step."""
    with open(outdir / LOSS_LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_loss_log(outdir: Path, step: int) -> None:
    """Drop lines after `step`: a resumed run redoes the steps after its checkpoint. A line cut short
    by a killed process is dropped too."""
    path = outdir / LOSS_LOG_NAME
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


def was_killed(record: dict) -> bool:
    """Whether a run whose record still says "running" has no process left: killed outright
    (SIGKILL, out of memory, power loss), when nothing could write "interrupted" or "failed".
    Only decidable on the machine that ran it; a run from another host counts as alive."""
    if record.get("status") != "running" or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    return False
