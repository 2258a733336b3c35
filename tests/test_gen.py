"""`dream gen` on tiny models: sizes, counts, seeds, metadata, --from, prompt files, model forms."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written


def paths_of(result):
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_size_count_and_names(gen):
    result, outdir = gen("A Red Circle!", "-n", 3, "-s", 41, "-W", 48, "-H", 40)
    paths = paths_of(result)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "00000-41-a-red-circle.png", "00001-42-a-red-circle.png", "00002-43-a-red-circle.png",
    ]
    assert [str(p) for p in written(outdir)] == paths
    assert all(Image.open(p).size == (48, 40) for p in paths)


def test_native_size_when_none_given(gen):
    # The tiny UNet samples 16x16 latents and its VAE scales by 2: 32 px is its native size.
    (path,) = paths_of(gen("x", "-s", 1)[0])
    assert Image.open(path).size == (32, 32)


def test_equal_seeds_equal_pixels_and_different_seeds_differ(gen):
    a = paths_of(gen("a red circle", "-s", 7)[0])[0]
    b = paths_of(gen("a red circle", "-s", 7)[0])[0]
    c = paths_of(gen("a red circle", "-s", 8)[0])[0]
    assert a != b  # never overwritten: the second run got the next counter
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


def test_image_i_of_a_batch_is_seed_plus_i_alone(gen):
    batch = paths_of(gen("a red circle", "-s", 100, "-n", 3)[0])
    alone = paths_of(gen("a red circle", "-s", 102)[0])[0]
    assert np.array_equal(pixels(batch[2]), pixels(alone))


def test_random_seed_is_recorded_in_name_and_metadata(gen, cli):
    (path,) = paths_of(gen("x")[0])
    seed = int(re.match(r"\d{5}-(\d+)-x\.png$", path.rsplit("/", 1)[-1]).group(1))
    info = json.loads(cli("info", "--json", path).stdout)
    assert info["dreamcli"]["seed"] == seed
    assert info["a1111"]["Seed"] == str(seed)


def test_metadata_round_trip(gen, cli, tiny):
    result, _ = gen("a red circle", "--negative", "blurry", "-s", 5, "-g", 4.5, "--scheduler", "euler-a")
    (path,) = paths_of(result)
    image = Image.open(path)
    params = image.info["parameters"]
    assert params.splitlines()[0] == "a red circle"
    assert params.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 2, Sampler: Euler a, CFG scale: 4.5, Seed: 5, Size: 32x32" in params
    record = json.loads(image.info["dreamcli"])
    assert record["request"]["guidance_scale"] == 4.5
    assert record["request"]["model"]["model"] == str(tiny["sd1"])
    assert re.fullmatch(r"[0-9a-f]{10}", record["model_hash"])
    assert set(record["versions"]) >= {"dreamcli", "diffusers", "torch", "transformers"}

    info = cli("info", "--json", path)
    assert info.exit_code == 0
    data = json.loads(info.stdout)
    assert data["a1111"]["prompt"] == "a red circle"
    assert data["a1111"]["negative_prompt"] == "blurry"
    assert data["a1111"]["Sampler"] == "Euler a"
    assert data["dreamcli"] == record
    text = cli("info", path).stdout
    assert text.startswith("a red circle\nNegative prompt: blurry\nSteps: 2")


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_other_formats_carry_metadata(gen, cli, fmt):
    (path,) = paths_of(gen("a red circle", "-s", 9, "--format", fmt)[0])
    assert path.endswith(f".{fmt}")
    data = json.loads(cli("info", "--json", path).stdout)
    assert data["a1111"]["Seed"] == "9"
    assert data["dreamcli"]["request"]["prompt"] == "a red circle"


def test_from_image_reproduces_pixels(gen, tmp_path):
    first, outdir = gen("a blue square", "--negative", "red", "-s", 11, "-n", 2, "--scheduler", "dpm++2m-karras",
                        "-W", 40, "-H", 32)
    second_image = paths_of(first)[1]
    again = gen("--from", second_image)[0]
    (remade,) = paths_of(again)
    assert remade != second_image
    assert "-12-a-blue-square" in remade
    assert np.array_equal(pixels(remade), pixels(second_image))
    # Flags given with --from win over the recorded values.
    changed = paths_of(gen("--from", second_image, "-s", 13)[0])[0]
    assert "-13-" in changed and not np.array_equal(pixels(changed), pixels(second_image))


def test_guidance_rescale_changes_the_picture_and_is_recorded(gen, cli):
    plain = paths_of(gen("a red circle", "-s", 4, "-g", 9)[0])[0]
    rescaled = paths_of(gen("a red circle", "-s", 4, "-g", 9, "--guidance-rescale", "0.7")[0])[0]
    assert np.abs(pixels(rescaled) - pixels(plain)).mean() > 0.5
    info = json.loads(cli("info", "--json", rescaled).stdout)
    assert info["dreamcli"]["request"]["guidance_rescale"] == 0.7 and info["a1111"]["CFG rescale"] == "0.7"
    assert "CFG rescale" not in json.loads(cli("info", "--json", plain).stdout)["a1111"]  # 0: A1111's plain text
    again = paths_of(gen("--from", rescaled)[0])[0]
    assert np.array_equal(pixels(again), pixels(rescaled))
    result, outdir = gen("x", "--guidance-rescale", "1.5")
    assert result.exit_code == 2 and "guidance-rescale 1.5 is out of range: use 0 to 1" in result.stderr


def test_from_image_without_metadata(gen, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result, outdir = gen("--from", plain)
    assert result.exit_code == 2 and "no generation parameters" in result.stderr


def test_prompt_file_with_json_lines(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# shapes\n"
        "a red circle\n"
        "\n"
        '{"prompt": "a green square", "seed": 77, "width": 48, "num_images": 2}\n'
        '{"prompt": "a white triangle", "negative": "black", "steps": 1, "guidance": 2}\n'
    )
    result, outdir = gen("--prompts", prompts, "-s", 5)
    paths = paths_of(result)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == [
        "00000-5-a-red-circle.png", "00001-77-a-green-square.png", "00002-78-a-green-square.png",
        "00003-5-a-white-triangle.png",
    ]
    assert Image.open(paths[1]).size == (48, 32)
    last = json.loads(Image.open(paths[3]).info["dreamcli"])["request"]
    assert (last["negative_prompt"], last["num_inference_steps"], last["guidance_scale"]) == ("black", 1, 2.0)


def test_prompts_from_stdin_and_json_output(gen):
    result, outdir = gen("--prompts", "-", "--json", "-s", 3, input="one\ntwo\n")
    lines = [json.loads(line) for line in paths_of(result)]
    assert [(d["prompt"], d["seed"]) for d in lines] == [("one", 3), ("two", 3)]
    for d in lines:
        assert {"path", "seed", "prompt", "model"} <= set(d)
        assert Image.open(d["path"]).size == (32, 32)


def test_never_overwrites(gen):
    result, outdir = gen("x", "-s", 1)
    (first,) = paths_of(result)
    # A file squatting on the next counter's name keeps its bytes; the new image goes past it.
    squatter = outdir / "00001-1-x.png"
    squatter.write_bytes(b"mine")
    (second,) = paths_of(gen("x", "-s", 1)[0])
    assert squatter.read_bytes() == b"mine"
    assert second.endswith("00002-1-x.png")


def test_every_scheduler_runs(gen):
    from dreamcli.schedulers import SCHEDULERS, scheduler_names

    outputs = []
    for name in [n for n in scheduler_names() if SCHEDULERS[n].kind == "discrete"]:  # flow ones: test_families
        (path,) = paths_of(gen("x", "-s", 2, "--scheduler", name)[0])
        outputs.append(pixels(path))
        assert json.loads(Image.open(path).info["dreamcli"])["scheduler"] == name
    assert len({o.tobytes() for o in outputs}) > 3  # samplers really differ


def test_single_file_sd1_via_hf_cache_matches_folder(gen, tiny):
    folder = paths_of(gen("x", "-s", 4)[0])[0]
    single = paths_of(gen("x", "-s", 4, model=tiny["sd1_file"])[0])[0]
    assert np.array_equal(pixels(folder), pixels(single))


def test_sdxl_folder_and_single_file(gen, tiny):
    folder = paths_of(gen("x", "-s", 4, "-W", 48, model=tiny["sdxl"])[0])[0]
    single = paths_of(gen("x", "-s", 4, "-W", 48, "--model-config", tiny["sdxl"], model=tiny["sdxl_file"])[0])[0]
    assert Image.open(folder).size == (48, 32)
    assert np.array_equal(pixels(folder), pixels(single))
    assert json.loads(Image.open(single).info["dreamcli"])["family"] == "sdxl"


def test_hf_repo_id_from_cache(gen, tiny):
    (path,) = paths_of(gen("x", "-s", 4, model=tiny["repo"])[0])
    record = json.loads(Image.open(path).info["dreamcli"])
    assert record["model"] == tiny["repo"]
    assert record["model_hash"] == "0123456789"  # the cached snapshot's commit


def test_presets_and_user_config_precedence(cli, tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    (home / "config.toml").write_text(f'preset = "tiny"\nsteps = 3\nguidance = 3.0\noutdir = "{tmp_path / "o"}"\n')
    (home / "presets" / "tiny.toml").write_text(f'model = "{tiny["sd1"]}"\nsteps = 2\nwidth = 40\n')

    def request_of(*args):
        result = cli("gen", "x", "-q", "-s", 1, *args)
        (path,) = paths_of(result)
        return json.loads(Image.open(path).info["dreamcli"])["request"]

    req = request_of()  # preset (from the user config) > user config > built-in
    assert (req["num_inference_steps"], req["guidance_scale"], req["width"]) == (2, 3.0, 40)
    req = request_of("--steps", "1", "-W", "48")  # flags win over everything
    assert (req["num_inference_steps"], req["width"]) == (1, 48)
    req = request_of("-m", str(tiny["sd1"]))  # a model named on the command line skips the config's preset
    assert (req["num_inference_steps"], req["width"]) == (3, 32)


def test_scheduler_list(cli):
    result = cli("gen", "--scheduler", "list")
    assert result.exit_code == 0
    rows = dict(line.split("\t") for line in result.stdout.splitlines())
    assert list(rows)[:11] == [
        "ddim", "pndm", "lms", "euler", "euler-a", "heun", "dpm++2m", "dpm++2m-karras", "dpm++sde-karras",
        "unipc", "lcm",
    ]
    assert rows["euler"] == "SD 1.x, SD 2.x, SDXL, PixArt-Σ"  # Kandinsky's pipelines skip input scaling
    assert rows["ddim"] == "SD 1.x, SD 2.x, SDXL, PixArt-Σ, Kandinsky 2.2"
    assert rows["flow-euler"] == "SD3, Flux.1"


def test_stderr_reports_device_and_summary(cli, tiny, tmp_path):
    result = cli("gen", "-m", tiny["sd1"], "x", "--steps", 1, "-o", tmp_path)
    assert result.exit_code == 0
    assert "on cpu, fp32" in result.stderr
    assert re.search(r"1 image\(s\) in [\d.]+ s", result.stderr)
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_step_progress_counts_what_the_sampler_runs(tiny, scheduler):
    from dreamcli.requests import GenRequest, ModelOptions
    from dreamcli.tasks import generate

    seen = []
    request = GenRequest("x", ModelOptions(str(tiny["sd1"]), scheduler=scheduler), num_inference_steps=4, seed=1)
    generate(request, on_step=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    # PNDM runs warm-up steps beyond the 4 asked for: the bar counts them instead of passing 100 %.
    assert seen == [(i, total) for i in range(1, total + 1)] and total >= 4
