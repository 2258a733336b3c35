"""dream outpaint: exact size, original region identical, new area drawn; bad margins refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import pixels
from image_task_helpers import assert_refused, demo_model, save, texture


@pytest.fixture
def outpaint(cli, tiny, tmp_path):
    """`dream outpaint` of a 40x24 picture on the tiny SD1 model (native 32 px), 2 steps: (result, outdir, image)."""
    outdir = tmp_path / "out"
    image = save(texture(40, 24), tmp_path / "in.png")

    def run(*args):
        result = cli("outpaint", image, "a wider view", *args, "-m", tiny["sd1"], "--steps", 2, "-o", outdir,
                     "-s", 5)
        return result, outdir, image

    return run


def test_exact_size_original_identical_new_area_not_flat(outpaint):
    result, outdir, image = outpaint("--left", 5, "--right", 40, "--top", 8, "--json")
    assert result.exit_code == 0, result.stderr
    assert "rounded up to multiples of 8: left 8, right 40, top 8" in result.stderr
    line = json.loads(result.stdout)
    out, before = pixels(line["path"]), pixels(image)
    assert out.shape == (24 + 8, 8 + 40 + 40, 3)
    assert np.array_equal(out[8:, 8:48], before)
    new = out[:, 48:].reshape(-1, 3)
    assert new.std(axis=0).min() > 5  # drawn, not a flat fill
    assert line["task"] == "outpaint"


def test_long_extensions_are_done_in_passes_no_larger_than_the_model(tiny, tmp_path):
    from dreamcli.imageops.canvas import Margins
    from dreamcli.requests import ModelOptions, OutpaintRequest
    from dreamcli.tasks import outpaint
    from dreamcli.tasks.outpaint import plan_passes

    # The tiny model is 32 px: 64 px to the right takes 4 passes of 16, each window 32 px wide.
    assert [m.right for m in plan_passes((40, 24), Margins(right=64), 32)] == [16, 16, 16, 16]
    assert plan_passes((8, 8), Margins(8, 8, 8, 8), 32) == [Margins(8, 8, 8, 8)]  # fits: one pass
    image = texture(40, 24)
    request = OutpaintRequest(image, "", ModelOptions(str(tiny["sd1"])), right=64, num_inference_steps=2, seed=1)
    (result,) = outpaint(request)
    assert result.image.size == (104, 24) and result.record["passes"] == 4
    assert np.array_equal(np.asarray(result.image)[:, :40], np.asarray(image))


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([], ["nothing to extend", "--all"]),
        (["--left", "-8"], ["--left -8 is negative"]),
        (["--all", "0"], ["nothing to extend"]),
        (["--all", "4096"], ["over the limit", "--max-pixels"]),
    ],
)
def test_bad_margins_and_oversized_outputs_are_refused(outpaint, args, fragments):
    result, outdir, _ = outpaint(*args)
    assert_refused(result, outdir, *fragments)


def test_max_pixels_raises_the_limit(outpaint):
    result, outdir, _ = outpaint("--right", 8, "--max-pixels", 100)
    assert_refused(result, outdir, "48x24", "--max-pixels 1152")


def test_demo_model_extends_a_blue_background_in_blue(tmp_path):
    """Meaning: widening a plain blue picture with the demo model keeps the new area blue."""
    from dreamcli.demo.world import COLORS, nearest_color
    from dreamcli.requests import ModelOptions, OutpaintRequest
    from dreamcli.tasks import outpaint

    folder = demo_model()
    blue = Image.new("RGB", (128, 128), COLORS["blue"])
    request = OutpaintRequest(blue, "a blue background", ModelOptions(str(folder)), right=64,
                              num_inference_steps=20, seed=0)
    out = np.asarray(outpaint(request)[0].image)
    assert out.shape == (128, 192, 3)
    names = [nearest_color(px) for px in out[:, 128:].reshape(-1, 3)]
    assert names.count("blue") / len(names) > 0.6


def _seam_step(image, x: int) -> float:
    """Mean absolute colour step between columns x - 1 and x, in 8-bit levels."""
    a = np.asarray(image, dtype=np.float32)
    return float(np.abs(a[:, x] - a[:, x - 1]).mean())


def test_the_new_area_meets_the_original_without_a_step():
    """A drawing 25 levels brighter than the picture (a VAE shift, a redrawn band) leaves no step at the seam."""
    from dreamcli.imageops.canvas import Margins, match_seams

    full = np.asarray(texture(72, 24), dtype=np.float32)
    picture = Image.fromarray(full[:, 16:56].astype(np.uint8))
    drawn = Image.fromarray((full + 25).clip(0, 255).astype(np.uint8))
    margins = Margins(left=16, right=16)
    pasted = drawn.copy()
    pasted.paste(picture, (16, 0))  # what outpaint did before: a hard step at x = 16 and 56
    out = match_seams(drawn, picture, margins, fade=8)
    natural = [_seam_step(Image.fromarray(full.astype(np.uint8)), x) for x in (16, 56)]
    for x, expected in zip((16, 56), natural, strict=True):
        assert _seam_step(pasted, x) > expected + 10
        assert _seam_step(out, x) < expected + 2
    a = np.asarray(out)
    assert np.array_equal(a[:, 16:56], np.asarray(picture))  # the original, bit for bit
    assert np.array_equal(a[:, :6], np.asarray(drawn)[:, :6])  # beyond the fade: the drawing as drawn


def test_demo_model_outpaint_shows_no_hard_seam():
    """The README's example: 64 px each side of the demo triangle. Pasting the original back over a
    drawing that differed left steps of 36 and 34 levels at the two seams; now 4.7 and 3.2 (1.5 elsewhere)."""
    from dreamcli.demo.world import Scene, draw
    from dreamcli.requests import ModelOptions, OutpaintRequest
    from dreamcli.tasks import outpaint

    folder = demo_model()
    scene = draw(Scene("triangle", "yellow", "green", "center", "small"))
    request = OutpaintRequest(scene, "a yellow triangle on a green background", ModelOptions(str(folder)),
                              left=64, right=64, num_inference_steps=20, guidance_scale=2.0, seed=0)
    image = outpaint(request)[0].image
    assert np.array_equal(np.asarray(image)[:, 64:192], np.asarray(scene))
    for x in (64, 192):
        assert _seam_step(image, x) < 8, x
