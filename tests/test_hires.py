"""`dream gen --hires`: sizes, the A1111 keys, --from, bad values, progress, other families, and meaning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import pixels, written


def one(result) -> str:
    assert result.exit_code == 0, result.stderr
    (path,) = result.stdout.split()
    return path


def params_of(path) -> str:
    return Image.open(path).info["parameters"]


def record_of(path) -> dict:
    return json.loads(Image.open(path).info["dreamcli"])


def mean_diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# ---------------------------------------------------------------- sizes and records


def test_latent_hires_is_scale_times_the_model_size_and_writes_a1111_keys(gen):
    # The tiny SD1 draws 32 px; 1.5x is 48.
    path = one(gen("a red circle", "-s", 5, "--hires", 1.5)[0])
    assert Image.open(path).size == (48, 48)
    last = params_of(path).splitlines()[-1]
    # Size is the first pass's, as in A1111; the second pass ran 2 steps x 0.5.
    for key in ("Size: 32x32", "Denoising strength: 0.5", "Hires upscale: 1.5", "Hires steps: 2",
                "Hires upscaler: Latent"):
        assert key in last, last
    request = record_of(path)["request"]
    assert (request["width"], request["height"], request["hires_scale"]) == (32, 32, 1.5)
    assert (request["hires_upscaler"], request["hires_strength"], request["hires_steps"]) == ("latent", 0.5, 2)


def test_lanczos_hires_on_a_wide_picture_with_its_own_steps_and_strength(gen, cli):
    path = one(gen("a red circle", "-s", 5, "-W", 48, "-H", 32, "--hires", 2, "--hires-upscaler", "lanczos",
                   "--hires-strength", 0.3, "--hires-steps", 4)[0])
    assert Image.open(path).size == (96, 64)
    a1111 = json.loads(cli("info", "--json", path).stdout)["a1111"]
    assert {k: a1111[k] for k in ("Size", "Hires upscale", "Hires steps", "Hires upscaler", "Denoising strength")} == {
        "Size": "48x32", "Hires upscale": "2", "Hires steps": "4", "Hires upscaler": "Lanczos",
        "Denoising strength": "0.3"}


def test_the_second_pass_redraws_the_enlarged_picture(gen):
    plain = one(gen("a red circle", "-s", 5)[0])
    resized = np.asarray(Image.open(plain).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS), np.int16)
    hires = one(gen("a red circle", "-s", 5, "--hires", 2, "--hires-upscaler", "lanczos")[0])
    assert np.abs(pixels(hires) - resized).mean() > 5  # not a plain resize: img2img changed it


# ---------------------------------------------------------------- --from


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_from_remakes_a_hires_image_pixel_for_pixel(gen, upscaler):
    first = one(gen("a blue square", "-s", 11, "-W", 40, "-H", 32, "--hires", 1.5, "--hires-upscaler", upscaler,
                    "--hires-steps", 3, "--scheduler", "euler")[0])
    again = one(gen("--from", first)[0])
    assert again != first
    assert Image.open(again).size == Image.open(first).size == (60, 48)  # in the tiny VAE's 2 px blocks
    assert np.array_equal(pixels(again), pixels(first))


def test_config_hires_applies_but_not_to_from_or_hires_0(gen, tmp_path, monkeypatch):
    plain = one(gen("a red circle", "-s", 5)[0])
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("hires = 2\nhires_strength = 0.6\nhires_upscaler = \"lanczos\"\n")
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    configured = one(gen("a red circle", "-s", 5)[0])
    assert Image.open(configured).size == (64, 64) and "Denoising strength: 0.6" in params_of(configured)
    # The record of an image made without hires says so: the config does not enlarge its remake.
    remade = one(gen("--from", plain)[0])
    assert Image.open(remade).size == (32, 32) and np.array_equal(pixels(remade), pixels(plain))
    off = one(gen("a red circle", "-s", 5, "--hires", 0)[0])
    assert np.array_equal(pixels(off), pixels(plain)) and "Hires" not in params_of(off)


def a1111_png(path, hires_keys: str):
    info = PngInfo()
    info.add_text("parameters", "a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, "
                                f"Seed: 5, Size: 32x32, Model hash: 0123456789, {hires_keys}, Version: v1.10.1")
    Image.new("RGB", (48, 48)).save(path, pnginfo=info)
    return path


def test_from_an_a1111_png_takes_its_hires_keys(gen, tmp_path):
    source = a1111_png(tmp_path / "a1111.png", "Denoising strength: 0.4, Hires upscale: 1.5, Hires steps: 4, "
                                                "Hires upscaler: Latent")
    made = one(gen("--from", source)[0])
    assert Image.open(made).size == (48, 48)
    request = record_of(made)["request"]
    assert (request["hires_scale"], request["hires_strength"], request["hires_steps"]) == (1.5, 0.4, 4)
    assert request["hires_upscaler"] == "latent"


def test_from_an_a1111_png_with_a_gan_upscaler_is_refused_unless_overridden(gen, tmp_path):
    keys = "Denoising strength: 0.4, Hires upscale: 2, Hires steps: 4, Hires upscaler: R-ESRGAN 4x+"
    source = a1111_png(tmp_path / "esrgan.png", keys)
    result, outdir = gen("--from", source)
    assert result.exit_code == 2
    assert "esrgan.png" in result.stderr and "unknown hires-upscaler 'R-ESRGAN 4x+'" in result.stderr
    assert not written(outdir)
    made = one(gen("--from", source, "--hires-upscaler", "lanczos")[0])
    assert Image.open(made).size == (64, 64)
    assert record_of(made)["request"]["hires_upscaler"] == "lanczos"


def test_prompt_file_lines_set_hires_per_line(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('{"prompt": "a green square", "hires": 2, "hires_strength": 0.6}\na red circle\n')
    result, _ = gen("--prompts", prompts, "-s", 1)
    assert result.exit_code == 0, result.stderr
    assert [Image.open(p).size for p in result.stdout.split()] == [(64, 64), (32, 32)]


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize("args, words", [
    (["--hires", 0.5], "hires 0.5 is out of range: use 1 to 8"),
    (["--hires", 9], "hires 9 is out of range"),
    (["--hires", 2, "--hires-strength", 0], "hires-strength 0 is out of range"),
    (["--hires", 2, "--hires-strength", 1.5], "hires-strength 1.5 is out of range"),
    (["--hires", 2, "--hires-steps", 0], "hires-steps 0 is too few"),
    (["--hires", 2, "--hires-upscaler", "SwinIR_4x"], "unknown hires-upscaler 'SwinIR_4x': use latent, lanczos"),
    (["--hires", 2, "--hires-steps", 1], "hires-steps 1 x hires-strength 0.5 is less than one denoising step"),
    (["--hires", 2.5, "-W", 2048, "-H", 2048], "the hires image is 5120x5120"),
])
def test_bad_hires_values_exit_2_with_one_line(gen, args, words):
    result, outdir = gen("a red circle", *args)
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not written(outdir)


def test_the_pixel_limit_counts_the_hires_size(gen, monkeypatch):
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "2000")  # the 32 px first pass fits, its 64 px hires does not
    result, outdir = gen("a red circle", "--hires", 2)
    assert result.exit_code == 2 and "the hires image is 64x64 = 4096 pixels" in result.stderr
    assert not written(outdir)


def test_hires_flags_without_hires_say_they_do_nothing(cli, tiny, tmp_path):
    result = cli("gen", "a red circle", "-m", tiny["sd1"], "--steps", 2, "-s", 5, "-o", tmp_path,
                 "--hires-strength", 0.3)
    assert Image.open(one(result)).size == (32, 32)
    assert "--hires-strength does nothing without --hires SCALE" in result.stderr


# ---------------------------------------------------------------- library: progress and batches


def test_progress_counts_both_passes(tiny):
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate

    calls = []
    request = GenRequest("x", ModelOptions(str(tiny["sd1"])), num_inference_steps=2, seed=1, hires_scale=2,
                         hires_steps=6, hires_strength=0.5, guidance_scale=2.0)
    generate(request, on_step=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == list(range(1, len(calls) + 1))  # one count per step, never back
    # PNDM runs 3 timesteps for 2 steps (a warm-up step), then the hires pass 6 x 0.5 = 3 (and its own warm-up):
    # the total counts the second pass from the first step on, and the bar ends full.
    assert calls[0][1] >= 3 + 3
    assert calls[-1][0] == calls[-1][1] >= 3 + 3


def test_a_batched_first_pass_gives_each_image_its_own_hires_pass(tiny):
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate

    options = ModelOptions(str(tiny["sd1"]))
    common = {"num_inference_steps": 2, "hires_scale": 1.5, "hires_upscaler": "lanczos"}
    batched = generate(GenRequest("x", options, seed=20, num_images=3, **common), batch_size=3)
    alone = generate(GenRequest("x", options, seed=22, **common))[0]
    assert [r.image.size for r in batched] == [(48, 48)] * 3
    # The same picture as made alone, up to the float rounding a batch brings.
    diff = np.abs(np.asarray(batched[2].image, np.int16) - np.asarray(alone.image, np.int16))
    assert diff.max() <= 3
    assert np.abs(np.asarray(batched[0].image, np.int16) - np.asarray(batched[2].image, np.int16)).mean() > 1


# ---------------------------------------------------------------- other families


@pytest.fixture
def fgen(cli, families, tmp_path):
    outdir = tmp_path / "out"

    def run(model, *args):
        return cli("gen", "a red circle", "-m", model, "--steps", 2, "-s", 3, "-o", outdir, "-q", *args), outdir

    return run


def test_sd3_with_lanczos_and_from(fgen, cli, families):
    path = one(fgen(families["sd3"], "--hires", 2, "--hires-upscaler", "lanczos")[0])
    assert Image.open(path).size == (64, 64)
    assert "Hires upscaler: Lanczos" in params_of(path) and record_of(path)["family"] == "sd3"
    again = one(cli("gen", "--from", path, "-o", str(path) + "-again", "-q"))
    assert np.array_equal(pixels(again), pixels(path))


def test_sd3_refuses_a_hires_size_past_its_position_grid(fgen, families):
    # The tiny SD3 has position embeddings for 16 patches a side: 64 px. (SD3 Medium: 3072 px.)
    result, outdir = fgen(families["sd3"], "--hires", 3)
    assert result.exit_code == 2 and "more than SD3 models draw: use at most 64 px a side" in result.stderr
    assert not written(outdir)


def test_flux_latent_hires_keeps_a_wide_picture_at_low_strength(families):
    """Flux returns packed latents: unpacked the wrong way, a wide picture would come back scrambled."""
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate

    def draw(**kw):
        request = GenRequest("a red circle", ModelOptions(families["flux-dev"]), num_inference_steps=4, width=64,
                             height=32, guidance_scale=3.0, **{"seed": 3, **kw})
        return np.asarray(generate(request)[0].image, np.float64)

    plain, other = draw(), draw(seed=9)
    kept = draw(hires_scale=1, hires_strength=0.1, hires_steps=10)  # one light step on the same latents
    assert kept.shape == plain.shape == (32, 64, 3)
    assert np.abs(kept - plain).mean() < np.abs(other - plain).mean() / 3


def test_kandinsky_takes_lanczos_and_says_so(cli, families, tmp_path):
    result = cli("gen", "a red circle", "-m", families["kandinsky22"], "--steps", 2, "-s", 3, "-o", tmp_path,
                 "--hires", 2)
    path = one(result)
    assert Image.open(path).size == (64, 64)
    assert "--hires-upscaler latent does not fit Kandinsky 2.2 models" in result.stderr
    assert record_of(path)["request"]["hires_upscaler"] == "lanczos"


def test_pixart_has_no_img2img_so_hires_is_refused(fgen, families):
    result, outdir = fgen(families["pixart-sigma"], "--hires", 2)
    assert result.exit_code == 2 and "which PixArt-Σ models have no pipeline for" in result.stderr
    assert not written(outdir)


# ---------------------------------------------------------------- meaning (the demo model)


def test_demo_model_hires_is_still_the_scene_asked_for(cli, tmp_path):
    from dreamcli.demo.world import read

    result = cli("gen", "a red circle on a blue background", "-s", 3, "--hires", 2, "-o", tmp_path, "-q")
    image = Image.open(one(result))
    assert image.size == (256, 256)
    reading = read(image)
    assert (reading.color, reading.background, reading.shape) == ("red", "blue", "circle")
