"""IMAGE... on every image command: one output per picture in order, the prompt after the pictures, every picture
checked before anything is written, one mask for all inpainted pictures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written
from image_task_helpers import assert_refused, save, texture


@pytest.fixture
def two(tmp_path):
    """Two pictures of different sizes and the same 3:2 shape, and a mask of that shape."""
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (16, 8, 32, 24))
    return {
        "a": save(texture(48, 32, seed=1), tmp_path / "first.png"),
        "b": save(texture(24, 16, seed=2), tmp_path / "second.png"),
        "mask": save(mask, tmp_path / "mask.png"),
    }


@pytest.fixture
def run(cli, tiny, tmp_path):
    """`dream COMMAND ARGS` on the tiny SD1 model, 2 steps, seed 4: (result, outdir)."""
    outdir = tmp_path / "out"

    def go(command, *args):
        return cli(command, *args, "-m", tiny["sd1"], "--steps", 2, "-s", 4, "-o", outdir, "-q"), outdir

    return go


EXTRA = {
    "inpaint": lambda p: ["--mask", p["mask"]],
    "outpaint": lambda p: ["--right", 8],
    "colorize": lambda p: [],
    "upscale": lambda p: ["--scale", 2, "--strength", 0.5],
    "img2img": lambda p: ["--strength", 0.5],
    "restore": lambda p: [],
}
# Output size per input size (w, h): img2img draws at the tiny model's 32x32 area in the picture's 3:2 shape.
SIZE = {
    "inpaint": lambda w, h: (w, h), "outpaint": lambda w, h: (w + 8, h), "colorize": lambda w, h: (w, h),
    "upscale": lambda w, h: (2 * w, 2 * h), "img2img": lambda w, h: (40, 24), "restore": lambda w, h: (w, h),
}


@pytest.mark.parametrize("command", list(EXTRA))
def test_each_picture_gets_its_output_in_order_with_the_prompt_after_them(run, two, command):
    result, outdir = run(command, two["a"], two["b"], "a garden", *EXTRA[command](two), "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(two["a"]), str(two["b"])]
    assert [line["prompt"] for line in lines] == ["a garden", "a garden"]
    assert [line["seed"] for line in lines] == [4, 4]  # each picture as if it ran alone
    assert Image.open(lines[0]["path"]).size == SIZE[command](48, 32)
    assert Image.open(lines[1]["path"]).size == SIZE[command](24, 16)
    # With several pictures each output's name says which picture it came from.
    assert "first-a-garden" in lines[0]["path"] and "second-a-garden" in lines[1]["path"]


def test_a_picture_in_a_batch_comes_out_as_when_it_runs_alone(run, two, tmp_path):
    result, outdir = run("img2img", two["a"], two["b"], "x", "-n", 2)
    assert result.exit_code == 0, result.stderr
    batch = result.stdout.splitlines()
    assert len(batch) == 4  # 2 pictures x 2 images
    alone, _ = run("img2img", two["b"], "x", "-n", 2)
    paths = alone.stdout.splitlines()
    assert np.array_equal(pixels(batch[2]), pixels(paths[0])) and np.array_equal(pixels(batch[3]), pixels(paths[1]))


def test_the_prompt_option_makes_every_positional_a_picture(run, two, tmp_path):
    third = tmp_path / "garden"  # a picture whose name looks like a prompt
    texture(24, 16, seed=3).save(third, format="PNG")
    result, outdir = run("img2img", two["a"], two["b"], third, "--prompt", "a red circle")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(Image.open(p).info["dreamcli"]) for p in result.stdout.splitlines()]
    assert [r["request"]["image"] for r in records] == [str(two["a"]), str(two["b"]), str(third)]
    assert {r["request"]["prompt"] for r in records} == {"a red circle"}


def test_an_existing_file_last_is_a_picture_not_the_prompt(run, two):
    result, outdir = run("upscale", two["a"], two["b"], "--scale", 2, "--strength", 0.5)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    records = [json.loads(Image.open(p).info["dreamcli"]) for p in result.stdout.splitlines()]
    assert {r["request"]["prompt"] for r in records} == {""}


def test_a_missing_picture_named_last_is_refused_not_taken_as_the_prompt(run, two, tmp_path):
    result, outdir = run("upscale", two["a"], tmp_path / "typo.png", "--scale", 2, "--strength", 0.5)
    assert_refused(result, outdir, "typo.png does not exist")


@pytest.mark.parametrize("command", list(EXTRA))
def test_one_damaged_picture_stops_the_run_before_anything_is_written(run, two, tmp_path, command):
    data = two["b"].read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[: len(data) // 2])
    result, outdir = run(command, two["a"], broken, two["b"], "x", *EXTRA[command](two))
    assert_refused(result, outdir, "broken.png", "truncated")


def test_the_mask_applies_to_every_picture_and_one_of_another_shape_is_refused_first(run, two, tmp_path):
    result, outdir = run("inpaint", two["a"], two["b"], "x", "--mask", two["mask"], "--mask-blur", 0)
    assert result.exit_code == 0, result.stderr
    first, second = result.stdout.splitlines()
    # Outside the mask (resized 2x down for the smaller picture, with a note) every pixel is kept.
    assert np.array_equal(pixels(first)[:8], pixels(two["a"])[:8])
    assert np.array_equal(pixels(second)[:3], pixels(two["b"])[:3])
    assert "the mask was resized to match" in result.stderr
    shutil.rmtree(outdir)
    square = save(texture(32, 32), tmp_path / "square.png")
    result, outdir = run("inpaint", two["a"], square, "x", "--mask", two["mask"])
    assert_refused(result, outdir, f"image {square}: mask is 48x32 but the image is 32x32")


def test_an_output_over_the_limit_for_one_picture_is_refused_before_any_is_written(run, two, monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "4000")
    big = save(texture(48, 40), tmp_path / "big.png")  # 1920 px in, 7680 px out at 2x: over 4000
    result, outdir = run("upscale", two["b"], big, "--scale", 2, "--strength", 0.5)
    assert_refused(result, outdir, f"image {big}: the output would be 96x80")


def test_no_picture_at_all_is_a_usage_error(run):
    result, outdir = run("img2img")
    assert result.exit_code == 2 and "Missing argument" in result.stderr
    assert written(outdir) == []
