"""dream img2img: sizes, strength and its effective steps, every family with an img2img pipeline, meaning on the
demo model, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import written
from image_task_helpers import assert_refused, demo_model, save, texture


def record_of(path) -> dict:
    return json.loads(Image.open(path).info["dreamcli"])


@pytest.fixture
def picture(tmp_path):
    """A 64x32 picture: twice as wide as high."""
    return save(texture(64, 32), tmp_path / "wide.png")


@pytest.fixture
def img2img(cli, tiny, tmp_path):
    """`dream img2img ARGS` on the tiny SD1 model (native 32 px), 4 steps, seed 3: (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args, model=None):
        return cli("img2img", *args, "-m", model or tiny["sd1"], "--steps", 4, "-s", 3, "-o", outdir, "-q"), outdir

    return run


def test_output_has_the_pictures_shape_at_the_models_area_and_records_the_run(img2img, picture, cli):
    result, outdir = img2img(picture, "a garden", "--strength", 0.5, "--json")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    # 64x32 at the tiny model's 32x32 area: 2:1 kept, sides rounded to multiples of 8.
    assert Image.open(line["path"]).size == (48, 24)
    assert (line["task"], line["prompt"], line["strength"], line["seed"]) == ("img2img", "a garden", 0.5, 3)
    record = record_of(line["path"])
    assert record["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert record["work_size"] == [48, 24] and (record["width"], record["height"]) == (48, 24)
    assert record["denoising_steps"] == 2  # int(4 steps x 0.5), what diffusers runs
    assert record["request"]["image"] == str(picture)
    params = Image.open(line["path"]).info["parameters"]
    assert params.startswith("a garden\n") and "Denoising strength: 0.5" in params and "Steps: 4" in params
    shown = cli("info", line["path"])
    assert shown.exit_code == 0 and "Denoising strength: 0.5" in shown.stdout


@pytest.mark.parametrize("args, size", [(["-W", 40, "-H", 24], (40, 24)), (["-W", 64], (64, 32)),
                                        (["-H", 16], (32, 16))])
def test_width_and_height_set_the_output_size(img2img, picture, args, size):
    result, outdir = img2img(picture, "x", *args)
    assert result.exit_code == 0, result.stderr
    (out,) = written(outdir)
    assert Image.open(out).size == size


def test_the_steps_diffusers_runs_are_steps_times_strength(tiny, picture):
    from dreamcli.requests import Img2ImgRequest, ModelOptions
    from dreamcli.tasks import img2img

    calls = []
    request = Img2ImgRequest(str(picture), ModelOptions(str(tiny["sd1"]), scheduler="ddim"), "x", strength=0.35,
                             num_inference_steps=10, seed=0)
    (result,) = img2img(request, lambda done, total: calls.append((done, total)))
    assert result.record["denoising_steps"] == 3 == request.denoising_steps
    assert calls == [(1, 3), (2, 3), (3, 3)]  # progress counts what runs, not the 10 asked for


def test_a_transparent_picture_keeps_its_alpha(img2img, tmp_path):
    rgba = texture(64, 32).convert("RGBA")
    alpha = Image.new("L", (64, 32), 0)
    alpha.paste(255, (16, 0, 48, 32))  # opaque middle, transparent sides
    rgba.putalpha(alpha)
    result, outdir = img2img(save(rgba, tmp_path / "cut.png"), "x")
    assert result.exit_code == 0, result.stderr
    out = Image.open(written(outdir)[0])
    assert out.mode == "RGBA" and out.size == (48, 24)
    a = np.asarray(out.getchannel("A"))
    assert a[:, :10].max() == 0 and a[:, 14:34].min() == 255 and a[:, 38:].max() == 0


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux-dev", "kandinsky22"])
def test_every_family_with_an_img2img_pipeline_runs(img2img, tiny, families, picture, name):
    model = tiny["sdxl"] if name == "sdxl" else families[name]
    # The tiny Flux and Kandinsky models are 256 and 512 px natively: -W/-H keep the test small.
    result, outdir = img2img(picture, "x", "--strength", 0.5, "-W", 48, "-H", 24, model=model)
    assert result.exit_code == 0, result.stderr
    (out,) = written(outdir)
    assert Image.open(out).size == (48, 24)
    assert "Img2Img" in record_of(out)["pipeline"]


def test_pixart_has_no_img2img_pipeline_and_is_refused(img2img, families, picture):
    result, outdir = img2img(picture, "x", model=families["pixart-sigma"])
    assert_refused(result, outdir, "PixArt-Σ models have no img2img pipeline")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--strength", 0], ["strength 0 is out of range"]),
        (["--strength", 1.5], ["strength 1.5 is out of range"]),
        (["--strength", 0.2], ["steps 4 x strength 0.2 is less than one denoising step"]),
        (["-W", 50], ["width 50 is not a multiple of 8"]),
    ],
)
def test_bad_values_are_refused_before_the_model_loads(img2img, picture, args, fragments):
    result, outdir = img2img(picture, "x", *args)
    assert_refused(result, outdir, *fragments)


def _demo_run(prompt: str, strength: float):
    """The demo model's img2img of a large red circle on green: (what the pixel reader sees, mean change)."""
    from dreamcli.demo.world import Scene, draw, read
    from dreamcli.requests import Img2ImgRequest, ModelOptions
    from dreamcli.tasks import img2img

    start = draw(Scene("circle", "red", "green", "center", "large"))
    request = Img2ImgRequest(start, ModelOptions(str(demo_model())), prompt, strength=strength,
                             num_inference_steps=20, seed=0)
    (result,) = img2img(request)
    change = float(np.abs(np.asarray(result.image, np.float64) - np.asarray(start, np.float64)).mean())
    seen = read(result.image)
    return (seen.color, seen.shape, seen.background), change


def test_demo_model_keeps_the_red_circle_at_low_strength_and_changes_more_with_more_strength():
    seen, low = _demo_run("a circle", 0.2)
    assert seen == ("red", "circle", "green")
    _, middle = _demo_run("a circle", 0.5)
    _, full = _demo_run("a circle", 1.0)
    assert low < middle < full and low < 10 and full > 50  # levels of 255, mean over the picture


def test_demo_model_at_full_strength_follows_the_new_prompt():
    # The demo model gets colours and backgrounds right far more often than shapes (its squares come out round).
    (color, _, background), _ = _demo_run("a blue square on a yellow background", 1.0)
    assert background == "yellow" and color in ("blue", "purple") and color != "red"
