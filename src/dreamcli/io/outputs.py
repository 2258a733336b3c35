"""Output file names and atomic, never-overwriting writes."""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from PIL import Image

from dreamcli.errors import DreamError, InputError

_COUNTER = re.compile(r"^(\d{5,})-")
SLUG_MAX = 48
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # Windows has no EDQUOT


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
        if e.errno in DISK_FULL:
            raise write_error(path, e) from None
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


def create_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Open a new hidden file in `folder` for writing: (fd, path).

    Like tempfile.mkstemp, but created with mode 0666 less the umask, as any tool creates files
    (mkstemp's 0600 would stay on the output once it is linked into place).
    """
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


@contextmanager
def replacing(path: Path, text: bool = False) -> Iterator:
    """A file to write whose contents replace `path` when the block ends; on any error (a full disk,
    Ctrl-C) `path` is left as it was and no temporary file remains. Created with the user's umask."""
    fd, tmp = create_temp(path.parent, f".{path.name}.", ".part")
    try:
        with os.fdopen(fd, "w" if text else "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it; the window is two system calls
    os.umask(mask)
    return mask


def match_umask(path: str | Path) -> None:
    """Give a file that a library created 0600 (safetensors writes through a private temporary
    file) the mode any tool would give it: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def write_error(path: Path, error: OSError) -> DreamError:
    """One line for a write that failed: the file and the cause. A full disk or quota is the machine's
    state (exit 1); so is any other failure here, since the folder was proven writable before work."""
    if error.errno in DISK_FULL:
        cause = "disk quota exceeded" if error.errno != errno.ENOSPC else "no space left on device"
        return DreamError(f"cannot write {path}: {cause}: free some space, or choose another folder with -o")
    return DreamError(f"cannot write {path}: {error.strerror or error}")


def save_atomic(image: Image.Image, outdir: Path, seed: int, prompt: str, fmt: str, counter: int | None = None,
                **save_kwargs) -> Path:
    """Write to a temporary file, then link it into place under a name that does not exist yet.

    The name's counter is `counter` when given (a job's place in a run split across processes),
    else the folder's next one. os.link fails instead of replacing, so two processes writing into
    one folder never clobber each other's files: the loser takes the next counter. A failed write
    (a full disk) raises DreamError naming the file, and leaves neither it nor the temporary file.
    """
    ext = "jpg" if fmt in ("jpg", "jpeg") else fmt
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    counter = next_counter(outdir) if counter is None else counter
    final = outdir / output_name(counter, seed, prompt, ext)  # the name it will most likely take
    tmp = None
    try:
        fd, tmp = create_temp(outdir, ".dream-", f".{ext}.part")
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=pil_format, **save_kwargs)
            f.flush()
            os.fsync(f.fileno())
        return _link_into_place(tmp, outdir, seed, prompt, ext, counter)
    except OSError as e:
        raise write_error(final, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _link_into_place(tmp: str, outdir: Path, seed: int, prompt: str, ext: str, counter: int) -> Path:
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
