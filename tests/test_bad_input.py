"""Every bad input: one red line on stderr, exit code 2, nothing written."""

from __future__ import annotations

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
