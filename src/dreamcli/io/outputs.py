"""Output file names and atomic, never-overwriting writes."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from PIL import Image

from dreamcli.errors import InputError

_COUNTER = re.compile(r"^(\d{5,})-")
SLUG_MAX = 48


def slugify(prompt: str) -> str:
    """A short, file-system-safe version of a prompt ("prompt" when nothing is left)."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return text[:SLUG_MAX].rstrip("-") or "prompt"


def check_outdir(outdir: Path) -> None:
    """Fail before any work if the folder cannot be written, without creating anything yet."""
    probe = outdir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output folder {outdir} is not writable ({probe} is a file): choose another with -o")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder {outdir} is not writable (permission denied): choose another with -o")


def ensure_outdir(outdir: str | Path) -> Path:
    """Create the output folder and prove it is writable before any work starts."""
    path = Path(outdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dream-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise InputError(f"output folder {path} is not writable ({reason}): choose another with -o") from None
    return path


def next_counter(outdir: Path) -> int:
    """One more than the highest counter among the folder's files (0 for an empty folder)."""
    counters = [int(m.group(1)) for p in outdir.iterdir() if (m := _COUNTER.match(p.name))]
    return max(counters, default=-1) + 1


def output_name(counter: int, seed: int, prompt: str, ext: str) -> str:
    """`{counter:05d}-{seed}-{slug}.{ext}`, as DESIGN specifies."""
    return f"{counter:05d}-{seed}-{slugify(prompt)}.{ext}"


def save_atomic(image: Image.Image, outdir: Path, seed: int, prompt: str, fmt: str, counter: int | None = None,
                **save_kwargs) -> Path:
    """Write to a temporary file, then link it into place under a name that does not exist yet.

    The name's counter is `counter` when given (a job's place in a run split across processes),
    else the folder's next one. os.link fails instead of replacing, so two processes writing into
    one folder never clobber each other's files: the loser takes the next counter.
    """
    ext = "jpg" if fmt in ("jpg", "jpeg") else fmt
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    fd, tmp = tempfile.mkstemp(dir=outdir, prefix=".dream-", suffix=f".{ext}.part")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=pil_format, **save_kwargs)
            f.flush()
            os.fsync(f.fileno())
        counter = next_counter(outdir) if counter is None else counter
        while True:
            final = outdir / output_name(counter, seed, prompt, ext)
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links on this file system (FAT, some network mounts)
                if final.exists():
                    counter += 1
                    continue
                os.rename(tmp, final)
                return final
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
