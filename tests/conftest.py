"""Offline test session: tiny pipelines saved as diffusers folders, single files and HF cache entries."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: it reads these once, at import time.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="dreamcli-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ["HF_HUB_CACHE"] = str(_SESSION_DIR / "hf" / "hub")
os.environ["DREAMCLI_HOME"] = str(_SESSION_DIR / "dreamcli-home")
# Tiny models gain nothing from threads, and on a busy 2-core CI machine spinning OpenMP threads
# made one 32 px image take a minute instead of under a second. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
SD1_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the repo diffusers takes SD1 configs from
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(folder: Path, repo_id: str) -> Path:
    """Lay a diffusers folder out as the HF cache does after a download (refs/main -> snapshot)."""
    repo_dir = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    return snapshot


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of tiny SD1 and SDXL models in every form dreamcli loads."""
    import tiny_models as tm

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = tm.write_tokenizer(root / "tokenizer")
    paths = {}
    for name, build in (("sd1", tm.build_sd1), ("sdxl", tm.build_sdxl)):
        pipe = build(tokenizer)
        pipe.save_pretrained(root / name)
        paths[name] = root / name
        paths[f"{name}_file"] = tm.save_single_file(pipe, root / f"{name}.safetensors")
    # A user who once downloaded SD 1.5 has its configs cached: single SD1 files load offline.
    put_in_hf_cache(paths["sd1"], SD1_REPO)
    put_in_hf_cache(paths["sd1"], "tiny-org/tiny-sd1")
    paths["repo"] = "tiny-org/tiny-sd1"
    return paths


@pytest.fixture(scope="session")
def families(tmp_path_factory):
    """Paths of tiny SD3, Flux, PixArt-Σ and Kandinsky 2.2 models, single files and LoRAs (tiny_families.py)."""
    import tiny_families as tf

    paths = tf.build_all(tmp_path_factory.mktemp("families"))
    # Single files are completed by their family's reference repo from the HF cache, as after one download.
    put_in_hf_cache(Path(paths["sd3"]), "stabilityai/stable-diffusion-3-medium-diffusers")
    put_in_hf_cache(Path(paths["flux-dev"]), "black-forest-labs/FLUX.1-dev")
    put_in_hf_cache(Path(paths["flux-schnell"]), "tiny-org/tiny-flux-schnell")
    return paths


@pytest.fixture
def cli():
    """Run `dream ARGS...` in-process; returns the click Result (stdout and stderr apart)."""
    from dreamcli.cli import app

    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


@pytest.fixture
def gen(cli, tiny, tmp_path):
    """`dream gen` on the tiny SD1 model, 2 steps, into a fresh folder; returns (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args, model=None, input=None):
        result = cli("gen", "-m", model or tiny["sd1"], "--steps", 2, "-o", outdir, "-q", *args, input=input)
        return result, outdir

    return run


def pixels(path) -> np.ndarray:
    """An image file's pixels as an array."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def written(outdir: Path) -> list[Path]:
    """Image files in a folder, sorted (hidden temporary files excluded)."""
    return sorted(p for p in Path(outdir).glob("*") if not p.name.startswith(".")) if Path(outdir).exists() else []


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
