"""GGUF-quantised transformer files: read through diffusers' GGUF support and the gguf package."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import pixels, written

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_files(families, tmp_path_factory):
    """The tiny Flux dev and SD3 transformers as Q8_0 GGUF files (diffusers key names, as city96's are)."""
    import tiny_families as tf

    root = tmp_path_factory.mktemp("gguf")
    sd3 = load_file(str(Path(families["sd3"]) / "transformer" / "diffusion_pytorch_model.safetensors"))
    return {
        "flux-dev": tf.save_gguf(load_file(families["flux-transformer-file"]), root / "flux-dev-Q8_0.gguf"),
        "sd3": tf.save_gguf(sd3, root / "sd3-Q8_0.gguf"),
    }


def run(cli, model, outdir, *args):
    return cli("gen", "-m", model, "a red circle", "--steps", 2, "-W", 32, "-H", 32, "-s", 3, "-o", outdir, "-q",
               *args)


@pytest.mark.parametrize("name, label", [("flux-dev", "Flux.1"), ("sd3", "SD3")])
def test_q8_gguf_draws_close_to_the_full_precision_folder(cli, families, gguf_files, tmp_path, name, label):
    # The file holds the transformer alone: encoders and VAE come from the family's cached reference repo.
    result = run(cli, gguf_files[name], tmp_path / "gguf")
    assert result.exit_code == 0, result.output
    folder = run(cli, families[name], tmp_path / "folder")
    assert folder.exit_code == 0, folder.output
    quantised, full = pixels(written(tmp_path / "gguf")[0]), pixels(written(tmp_path / "folder")[0])
    assert quantised.shape == full.shape == (32, 32, 3)
    diff = np.abs(quantised.astype(int) - full.astype(int))
    assert diff.mean() < 2 and diff.max() <= 16  # Q8_0 keeps 8 bits per weight: the picture barely moves
    info = cli("info", str(written(tmp_path / "gguf")[0]))
    assert f"Model family: {label}" in info.stdout
    assert f"Model path: {Path(gguf_files[name]).resolve()}" in info.stdout


def test_a_broken_gguf_file_is_one_line(cli, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    result = run(cli, bad, tmp_path / "out")
    assert result.exit_code == 2
    assert "cut.gguf is not a readable GGUF file" in result.stderr
    assert not (tmp_path / "out").exists() or not written(tmp_path / "out")
