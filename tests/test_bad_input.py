"""Every bad input: one red line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json
import os

import pytest

from conftest import written


def assert_refused(result, outdir, *fragments):
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    assert written(outdir) == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-W", "100"], ["width 100 is not a multiple of 8", "use 96 or 104"]),
        (["-H", "250"], ["height 250", "248 or 256"]),
        (["--steps", "0"], ["steps 0", "1 or more"]),
        (["-g", "-1"], ["guidance -1 is negative"]),
        (["-n", "0"], ["num-images 0", "1 or more"]),
        (["--scheduler", "warp"], ["unknown scheduler 'warp'", "euler-a", "dpm++2m-karras"]),
        (["--format", "gif"], ["unknown format 'gif'", "png, jpg or webp"]),
        (["--device", "tpu"], ["unknown device 'tpu'"]),
        (["--preset", "nope"], ["unknown preset 'nope'", "sd15"]),
        (["-g", "nan"], ["guidance nan is not a finite number", "7.5"]),
        (["-g", "inf"], ["guidance inf is not a finite number"]),
        (["--guidance-rescale", "nan"], ["guidance-rescale nan is not a finite number"]),
        (["--steps", "99999999999999999999999"], ["steps 99999999999999999999999 is too many", "1000"]),
        (["-n", "2000000"], ["num-images 2000000 is too many", "1000000"]),
        (["-W", "100000"], ["width 100000 is larger than any model draws", "16384"]),
        (["-W", "8192", "-H", "8192"], ["8192x8192", "over the limit", "DREAMCLI_MAX_PIXELS"]),
    ],
)
def test_bad_values_are_refused_before_loading(gen, args, fragments):
    result, outdir = gen("a red circle", *args)
    assert_refused(result, outdir, *fragments)


def test_no_prompt(gen):
    result, outdir = gen()
    assert_refused(result, outdir, "no prompt", "--prompts")


def test_missing_prompt_file(gen, tmp_path):
    result, outdir = gen("--prompts", tmp_path / "nope.txt")
    assert_refused(result, outdir, "prompt file", "does not exist")


def test_empty_prompt_file(gen, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n   \n")
    result, outdir = gen("--prompts", empty)
    assert_refused(result, outdir, "has no prompts")


def test_unreadable_prompt_file(gen, tmp_path):
    binary = tmp_path / "prompts.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    result, outdir = gen("--prompts", binary)
    assert_refused(result, outdir, "not UTF-8")


def test_malformed_json_line_names_the_line(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n# comment\n{"prompt": "x", "steps": 3,}\n')
    result, outdir = gen("--prompts", prompts)
    assert_refused(result, outdir, "line 3", "not valid JSON")


def test_bad_value_in_json_line_names_the_line(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n{"prompt": "x", "width": 30}\n')
    result, outdir = gen("--prompts", prompts)
    assert_refused(result, outdir, "line 2", "width 30 is not a multiple of 8")


def test_unknown_key_in_json_line(gen, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('{"prompt": "x", "stesp": 3}\n')
    result, outdir = gen("--prompts", prompts)
    assert_refused(result, outdir, "line 1", "unknown key 'stesp'")


def test_unknown_model_says_what_was_tried(gen, tmp_path):
    result, outdir = gen("x", model="no-such-model")
    assert_refused(result, outdir, "no-such-model", "preset", "local file", "repo id")


def test_uncached_repo_with_hub_off(gen):
    result, outdir = gen("x", model="someone/never-downloaded")
    assert_refused(result, outdir, "someone/never-downloaded", "not in the Hugging Face cache", "HF_HUB_OFFLINE")


def test_folder_without_model_index(gen, tmp_path):
    result, outdir = gen("x", model=tmp_path)
    assert_refused(result, outdir, "not a diffusers model", "model_index.json")


def test_pickle_checkpoint_refused(gen, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even a pickle")
    result, outdir = gen("x", model=ckpt)
    assert_refused(result, outdir, "pickle", "--allow-unsafe-pickle", ".safetensors")


def test_truncated_safetensors(gen, tiny, tmp_path):
    data = tiny["sd1_file"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    result, outdir = gen("x", model=cut)
    assert_refused(result, outdir, "truncated", "download it again")


def test_garbage_safetensors(gen, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    result, outdir = gen("x", model=bad)
    assert_refused(result, outdir, "not a readable .safetensors file")


def test_single_file_without_configs_offline(gen, tiny):
    # No SDXL repo in the HF cache and the hub is off: say how to supply configs.
    result, outdir = gen("x", model=tiny["sdxl_file"])
    assert_refused(result, outdir, "single-file SDXL checkpoint", "--model-config", "run once online")


def test_outdir_not_writable(cli, tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    result = cli("gen", "-m", tiny["sd1"], "x", "-o", blocker / "sub")
    assert_refused(result, tmp_path / "nothing", "not writable", "-o")
    assert blocker.read_text() == "I am a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_outdir_permission_denied(cli, tiny, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = cli("gen", "-m", tiny["sd1"], "x", "-o", locked)
    assert_refused(result, locked, "not writable")


def test_demo_model_not_built(cli, tmp_path, monkeypatch):
    import dreamcli.engine

    monkeypatch.setattr(dreamcli.engine, "package_path", lambda ref: tmp_path / "missing")
    result = cli("gen", "a red circle", "-o", tmp_path / "out")
    assert_refused(result, tmp_path / "out", "demo model is not built yet", "-m")


def test_lora_for_another_model(gen, tiny, tmp_path):
    from test_lora import make_diffusers_lora

    sdxl_lora = make_diffusers_lora(tiny["sdxl"], tmp_path / "xl_lora.safetensors")
    result, outdir = gen("x", "--lora", sdxl_lora)
    assert_refused(result, outdir, "LoRA", "does not fit model", "size mismatch")


def test_missing_lora(gen, tmp_path):
    result, outdir = gen("x", "--lora", tmp_path / "nope.safetensors")
    assert_refused(result, outdir, "LoRA", "not found")


# ---- numbers only the loaded model can check: steps its scheduler takes, sizes it draws at ----


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--steps", "1001"], ["steps 1001 is more than this model's PNDM scheduler can take (1000)", "--steps 1000"]),
        (["--steps", "1001", "--scheduler", "euler"], ["steps 1001", "EulerDiscrete", "(1000)"]),
        (["--steps", "51", "--scheduler", "lcm"], ["steps 51", "LCM scheduler can take (50)", "--steps 50"]),
    ],
)
def test_steps_beyond_the_scheduler_are_refused(gen, args, fragments):
    result, outdir = gen("a red circle", *args)
    assert_refused(result, outdir, *fragments)


def test_steps_at_the_scheduler_limit_are_accepted(gen):
    # The limit is the scheduler's own: LCM takes 50, one more is refused above.
    result, outdir = gen("a red circle", "--steps", "50", "--scheduler", "lcm", "-W", "16", "-H", "16")
    assert result.exit_code == 0, result.stderr
    assert len(written(outdir)) == 1


def test_prompt_file_line_with_too_many_steps_writes_nothing(gen, tmp_path):
    # Checked for every line once the model is loaded, before the first line's image is drawn.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n{"prompt": "x", "steps": 1001}\n')
    result, outdir = gen("--prompts", prompts)
    assert_refused(result, outdir, "steps 1001", "(1000)")


def test_native_size_over_the_pixel_limit_is_refused(gen, monkeypatch):
    # Only the width is given: the tiny model's native height (32) makes 256x32 = 8192 pixels.
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", "8000")
    result, outdir = gen("a red circle", "-W", "256")
    assert_refused(result, outdir, "256x32", "over the limit", "DREAMCLI_MAX_PIXELS")


def test_batch_over_the_pixel_limit_is_refused(gen, monkeypatch):
    monkeypatch.setenv("DREAMCLI_MAX_PIXELS", str(3 * 32 * 32))
    result, outdir = gen("a red circle", "-W", "32", "-H", "32", "-n", "4", "--batch-size", "4")
    assert_refused(result, outdir, "one batch holds 4 pictures of 32x32", "lower --batch-size")
    result, outdir = gen("a red circle", "-W", "32", "-H", "32", "-n", "4", "--batch-size", "3")
    assert result.exit_code == 0, result.stderr
    assert len(written(outdir)) == 4


@pytest.mark.parametrize(
    "line, fragments",
    [
        ('{"prompt": "x", "guidance": NaN}', ["line 1", "guidance nan is not a finite number"]),
        ('{"prompt": "x", "guidance_rescale": Infinity}', ["line 1", "guidance-rescale inf"]),
        ('{"prompt": null}', ["line 1", 'has no "prompt"']),
        ('{"prompt": "x", "steps": 1' + "0" * 5000 + "}", ["line 1", "more than 4300 digits"]),
        ('{"prompt": ' * 5000 + '"x"' + "}" * 5000, ["line 1", "nests too deeply"]),
    ],
)
def test_bad_numbers_and_nesting_in_json_lines(gen, tmp_path, line, fragments):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(line + "\n")
    result, outdir = gen("--prompts", prompts)
    assert_refused(result, outdir, *fragments)


@pytest.mark.parametrize(
    "preset, fragments",
    [
        ('steps = "many"', ["steps must be a whole number", "'many'"]),
        ("guidance = nan", ["guidance nan is not a finite number"]),
        ('offload = "no"', ["unknown offload 'no'", "model, sequential, group"]),
        ("lora = 5", ["lora must be a path or a list of paths", "5"]),
        ("width = 8192\nheight = 8192", ["8192x8192", "over the limit"]),
    ],
)
def test_bad_values_in_a_preset(cli, tiny, tmp_path, monkeypatch, preset, fragments):
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    (home / "presets" / "bad.toml").write_text(f'model = "{tiny["sd1"].as_posix()}"\n{preset}\n')
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    outdir = tmp_path / "out"
    assert_refused(cli("gen", "a red circle", "--preset", "bad", "-o", outdir, "-q"), outdir, *fragments)


def test_image_commands_refuse_non_finite_and_huge_numbers(cli, tiny, tmp_path):
    from PIL import Image

    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    Image.new("L", (32, 32), 255).save(mask)
    outdir = tmp_path / "out"
    base = ["-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q"]
    for args, fragments in [
        (["inpaint", image, "x", "--mask", mask, "--mask-blur", "inf"], ["mask-blur inf is not a finite number"]),
        (["inpaint", image, "x", "--mask", mask, "--mask-blur", "1e20"], ["mask-blur 1e+20 is wider", "4096"]),
        (["inpaint", image, "x", "--mask", mask, "--strength", "nan"], ["strength nan is not a finite number"]),
        (["inpaint", image, "x", "--mask", mask, "-g", "inf"], ["guidance inf is not a finite number"]),
        (["colorize", image, "--strength", "nan"], ["strength nan"]),
        (["upscale", image, "-g", "nan"], ["guidance nan"]),
        (["outpaint", image, "--right", 32, "-g", "-inf"], ["guidance -inf"]),
    ]:
        assert_refused(cli(*args, *base), outdir, *fragments)


@pytest.mark.parametrize("command", ["inpaint", "colorize", "outpaint", "upscale"])
def test_image_commands_refuse_steps_beyond_the_scheduler(cli, tiny, tmp_path, command):
    from PIL import Image

    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    Image.new("L", (32, 32), 255).save(mask)
    extra = {"inpaint": ["x", "--mask", mask], "outpaint": ["--right", 16], "upscale": ["--scale", 2]}.get(command, [])
    outdir = tmp_path / "out"
    result = cli(command, image, *extra, "-m", tiny["sd1"], "--steps", 1001, "--strength", 0.5, "-o", outdir, "-q")
    assert_refused(result, outdir, "steps 1001", "PNDM scheduler can take (1000)")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--lr", "nan"], ["lr nan is not a finite number"]),
        (["--alpha", "inf"], ["alpha inf is not a finite number"]),
        (["--prior-weight", "nan"], ["prior-weight nan"]),
        (["--rank", "100000"], ["rank 100000", "2048 or less"]),
        (["--resolution", "4096", "--batch-size", "4"], ["one training step holds 8 pictures of 4096x4096"]),
    ],
)
def test_tune_refuses_non_finite_and_huge_numbers(cli, tiny, tmp_path, args, fragments):
    photos = tmp_path / "photos"
    photos.mkdir()
    outdir = tmp_path / "run"
    result = cli("tune", "--images", photos, "--class", "dog", "-m", tiny["sd1"], "-o", outdir, *args)
    assert_refused(result, outdir, *fragments)


# ---- image metadata anyone can edit: `dream gen --from` and `dream info` ----


def image_with_metadata(path, record=None, parameters=None, raw=None):
    """A small PNG carrying the given dreamcli record (or raw chunk text) and A1111 text."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if raw is not None or record is not None:
        info.add_text("dreamcli", raw if raw is not None else json.dumps(record))
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path, pnginfo=info)
    return path


def a_record(model) -> dict:
    """The shape of a record dreamcli writes, for the tiny model."""
    return {
        "request": {
            "prompt": "a red circle", "negative_prompt": "", "num_inference_steps": 2, "guidance_scale": 7.5,
            "guidance_rescale": 0.0, "width": 32, "height": 32, "num_images": 1, "seed": 5,
            "model": {"model": str(model), "model_config": None, "scheduler": None, "loras": [], "device": "auto",
                      "dtype": "auto"},
        },
        "seed": 5, "model_path": str(model), "device": "cpu", "dtype": "fp32", "versions": {"dreamcli": "0"},
    }


def edited(record: dict, where: str, value) -> dict:
    record = json.loads(json.dumps(record))
    *parents, key = where.split(".")
    table = record
    for name in parents:
        table = table[name]
    table[key] = value
    return record


EDITS = [
    ("request.num_inference_steps", "many", ["steps must be a whole number", "'many'"]),
    ("request.prompt", ["a", "b"], ["prompt must be text", "['a', 'b']"]),
    ("request.width", 100000, ["width 100000 is larger than any model draws"]),
    ("request.guidance_scale", float("nan"), ["guidance nan is not a finite number"]),
    ("request.num_inference_steps", 0, ["steps 0 is too few"]),
    ("seed", 2**70, ["seed 1180591620717411303424 is out of range"]),
    ("request.model.loras", [5], ["lora must be a path or a list of paths"]),
    ("request.model.scheduler", "warp", ["unknown scheduler 'warp'"]),
    ("request.model.model", 5, ["model must be text"]),
    ("request.model", "x", ["request.model must be an object", "'x'"]),
    ("request", [1], ["request must be an object"]),
]


@pytest.mark.parametrize("where, value, fragments", EDITS, ids=[f"{w}={v!r}"[:40] for w, v, _ in EDITS])
def test_edited_metadata_is_refused_by_gen_from_and_info(cli, tiny, tmp_path, where, value, fragments):
    image = image_with_metadata(tmp_path / "edited.png", edited(a_record(tiny["sd1"]), where, value))
    outdir = tmp_path / "out"
    assert_refused(cli("gen", "--from", image, "-o", outdir, "-q"), outdir, str(image), *fragments)
    assert_refused(cli("info", image), outdir, str(image), *fragments)


def test_unedited_record_remakes_and_an_overriding_flag_fixes_a_bad_field(cli, tiny, tmp_path):
    # The control for the refusals above: the same record unedited makes an image, and a flag that
    # replaces the one bad value is taken instead of it.
    outdir = tmp_path / "out"
    good = image_with_metadata(tmp_path / "good.png", a_record(tiny["sd1"]))
    result = cli("gen", "--from", good, "-o", outdir, "-q")
    assert result.exit_code == 0, result.stderr
    bad = image_with_metadata(tmp_path / "bad.png", edited(a_record(tiny["sd1"]), "request.num_inference_steps", "x"))
    result = cli("gen", "--from", bad, "--steps", 2, "-o", outdir, "-q")
    assert result.exit_code == 0, result.stderr
    assert len(written(outdir)) == 2
    assert f"Model path: {tiny['sd1']}" in cli("info", good).stdout.splitlines()


def test_metadata_steps_beyond_the_scheduler_are_refused(cli, tiny, tmp_path):
    image = image_with_metadata(tmp_path / "edited.png",
                                edited(a_record(tiny["sd1"]), "request.num_inference_steps", 5000))
    outdir = tmp_path / "out"
    assert_refused(cli("gen", "--from", image, "-o", outdir, "-q"), outdir, "steps 5000", "(1000)")


@pytest.mark.parametrize(
    "parameters, fragments",
    [
        ("a cat\nSteps: many, Seed: 3", ["A1111 Steps 'many' is not a whole number"]),
        ("a cat\nSteps: 20, Size: 512x512x3", ["A1111 Size '512x512x3' is not WIDTHxHEIGHT"]),
        ("a cat\nSteps: 20, CFG scale: nan", ["guidance nan is not a finite number"]),
        ("a cat\nSteps: 20, Seed: 1" + "0" * 5000, ["A1111 Seed", "is not a whole number"]),
        ("a cat\nSteps: 20, Size: 99999x64", ["width 99999 is not a multiple of 8"]),
        ("a cat\nSteps: 20, Size: 8192x8192", ["8192x8192", "over the limit"]),
    ],
)
def test_edited_a1111_text_is_refused(cli, tmp_path, parameters, fragments):
    image = image_with_metadata(tmp_path / "edited.png", parameters=parameters)
    outdir = tmp_path / "out"
    assert_refused(cli("gen", "--from", image, "-o", outdir, "-q"), outdir, str(image), *fragments)
    assert_refused(cli("info", image), outdir, str(image), *fragments)


@pytest.mark.parametrize("raw", ["[1, 2]", "[" * 100_000 + "]" * 100_000, "{not json"])
def test_unreadable_record_falls_back_to_the_a1111_text(cli, tmp_path, raw):
    image = image_with_metadata(tmp_path / "edited.png", raw=raw, parameters="a cat\nSteps: 20, Seed: 3")
    result = cli("info", image)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["a cat", "Steps: 20, Seed: 3"]


def test_info_refuses_a_record_whose_versions_are_not_an_object(cli, tiny, tmp_path):
    image = image_with_metadata(tmp_path / "edited.png", edited(a_record(tiny["sd1"]), "versions", [1]))
    assert_refused(cli("info", image), tmp_path / "out", str(image), "versions must be an object")
