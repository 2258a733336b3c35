"""Helpers the image-to-image tests share: test pictures, the demo model's path, and refusal checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import written


def save(image: Image.Image, path: Path) -> Path:
    """Write a picture and return its path."""
    image.save(path)
    return path


def texture(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colourful picture (no flat areas, so kept and changed pixels are told apart)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    rgb = [127 + 100 * np.sin(x / (5 + i) + y / (7 + 2 * i) + phase[i]) for i in range(3)]
    return Image.fromarray(np.stack(rgb, -1).astype(np.uint8), "RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two same-size pictures."""
    x = np.asarray(a.convert("RGB"), np.float64)
    y = np.asarray(b.convert("RGB"), np.float64)
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_refused(result, outdir, *fragments):
    """Exit 2, exactly one red error line naming the problem, nothing on stdout, no file written."""
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    assert written(outdir) == []


def demo_model() -> Path:
    """The built-in demo model's folder, or skip the test with the reason."""
    from dreamcli.config import package_path

    folder = package_path("package:demo/model")
    if not (folder / "model_index.json").is_file():
        pytest.skip("the built-in demo model is not built yet (src/dreamcli/demo/model/ is missing)")
    return folder
