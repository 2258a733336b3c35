"""GGUF-quantised transformer files: read through diffusers' GGUF support and the gguf package."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import pixels, written

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def flux_gguf(families, tmp_path_factory):
    import tiny_families as tf

    state = load_file(families["flux-transformer-file"])
    return tf.save_gguf(state, tmp_path_factory.mktemp("gguf") / "flux-dev-Q8_0.gguf")


def run(cli, model, outdir, *args):
    return cli("gen", "-m", model, "a red circle", "--steps", 2, "-W", 32, "-H", 32, "-s", 3, "-o", outdir, "-q",
               *args)


def test_q8_gguf_flux_draws_close_to_the_full_precision_folder(cli, families, flux_gguf, tmp_path):
    # The file holds the transformer alone: encoders and VAE come from the cached FLUX.1-dev configs.
    result = run(cli, flux_gguf, tmp_path / "gguf")
    assert result.exit_code == 0, result.output
    folder = run(cli, families["flux-dev"], tmp_path / "folder")
    assert folder.exit_code == 0, folder.output
    quantised, full = pixels(written(tmp_path / "gguf")[0]), pixels(written(tmp_path / "folder")[0])
    assert quantised.shape == full.shape == (32, 32, 3)
    diff = np.abs(quantised.astype(int) - full.astype(int))
    assert diff.mean() < 2 and diff.max() <= 16  # Q8_0 keeps 8 bits per weight: the picture barely moves
    info = cli("info", str(written(tmp_path / "gguf")[0]))
    assert "Model family: Flux.1" in info.stdout
    assert f"Model path: {Path(flux_gguf).resolve()}" in info.stdout


def test_a_broken_gguf_file_is_one_line(cli, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    result = run(cli, bad, tmp_path / "out")
    assert result.exit_code == 2
    assert "cut.gguf is not a readable GGUF file" in result.stderr
    assert not (tmp_path / "out").exists() or not written(tmp_path / "out")
