"""The files of one training run in its output folder: config, loss log, checkpoints, weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path

CONFIG_NAME = "tune_config.json"
LOSS_LOG_NAME = "loss_log.jsonl"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
CHECKPOINTS = "checkpoints"
VALIDATION = "validation"
LOSS_CHART_NAME = "loss.png"
KEEP_CHECKPOINTS = 3  # each holds the optimizer state too; older ones are only a fallback
# Written last into a checkpoint, after every other file is on disk: a folder without it (or whose
# files no longer match it) was cut short and is never resumed from.
COMPLETE_NAME = "checkpoint_complete.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# A checkpoint being written (.tmp) or being deleted (.old): what a killed run leaves behind.
_UNFINISHED_DIR = re.compile(r"^step-\d+\.(tmp|old)$")
# Test hook: SIGKILL this process inside the checkpoint of this step, with half its files written.
TEST_KILL_ENV = "DREAMCLI_TEST_KILL_IN_CHECKPOINT"

# Settings that change what is learnt: a run may be resumed with other step counts or validation
# settings, but not with another model, subject, rank or batch.
NOT_IDENTITY = {
    "max_train_steps", "checkpointing_steps", "resume", "overwrite", "validation_prompt",
    "validation_steps", "num_validation_images", "export", "device", "num_class_images", "class_steps",
    "class_guidance", "offload",
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
    """Complete checkpoints as (step, folder), oldest first; half-written ones are left out."""
    folder = outdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return sorted(found)


def checkpoint_dir(outdir: Path, step: int) -> Path:
    """The folder a checkpoint at this step is saved in."""
    return outdir / CHECKPOINTS / f"step-{step:06d}"


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds every file its completeness marker lists, at the listed size."""
    try:
        listed = json.loads((folder / COMPLETE_NAME).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in listed.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def seal_checkpoint(folder: Path, step: int) -> None:
    """Flush a checkpoint's files to disk, then write its completeness marker (flushed too), so that
    even after a power cut the marker never names a file that is not whole."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(COMPLETE_NAME, None)
    for path in files.values():
        _fsync(path)
    marker = folder / COMPLETE_NAME
    with open(marker, "w") as f:
        json.dump({"step": step, "files": {name: p.stat().st_size for name, p in files.items()}}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(folder)


def publish_checkpoint(written: Path, final: Path) -> None:
    """Rename a sealed checkpoint into place, replacing one of the same step if any. Renames are atomic,
    so a kill at any moment leaves either folder whole or a .tmp / .old that remove_unfinished clears."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    written.replace(final)
    _fsync_dir(final.parent)


def unfinished_checkpoints(outdir: Path) -> list[Path]:
    """Checkpoint folders a killed run left half-written or half-deleted."""
    folder = outdir / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_dir() and (_UNFINISHED_DIR.match(p.name) or (_STEP_DIR.match(p.name) and not is_complete(p)))
    )


def remove_unfinished(outdir: Path) -> list[Path]:
    """Delete what unfinished_checkpoints finds; returns the half-written ones (not those being deleted)."""
    removed = []
    for path in unfinished_checkpoints(outdir):
        shutil.rmtree(path, ignore_errors=True)
        if not path.name.endswith(".old"):
            removed.append(path)
    return removed


def prune_checkpoints(outdir: Path) -> None:
    """Keep the newest KEEP_CHECKPOINTS checkpoints. Each goes out of the list by an atomic rename
    first: a kill in the middle of deleting it cannot leave a partial folder under a step's name."""
    for _, path in checkpoints(outdir)[:-KEEP_CHECKPOINTS]:
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        shutil.rmtree(old, ignore_errors=True)


def kill_here_if_testing(step: int) -> None:
    """Test hook: with DREAMCLI_TEST_KILL_IN_CHECKPOINT=STEP, die by SIGKILL while writing that checkpoint."""
    if os.environ.get(TEST_KILL_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` survive a power cut (POSIX; Windows cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def our_files(outdir: Path) -> list[Path]:
    """Everything a previous run wrote into this folder (what --overwrite removes)."""
    names = [CONFIG_NAME, LOSS_LOG_NAME, LOSS_CHART_NAME, WEIGHTS_NAME, CHECKPOINTS, VALIDATION]
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


def read_losses(outdir: Path) -> list[dict]:
    """The loss log's records in step order; a line cut short by a killed process is skipped."""
    records = []
    try:
        lines = (outdir / LOSS_LOG_NAME).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


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
    from dreamcli.io.outputs import replacing

    with replacing(path, text=True) as f:  # a kill while rewriting it keeps the old log whole
        f.write("".join(line + "\n" for line in kept))


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
