"""dream tune from the command line: bad input is one clear line, exit 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from test_tune import subject_images


@pytest.fixture
def tune_cli(cli, tiny, tmp_path):
    """`dream tune` on the tiny SD1 model into tmp_path/run; returns (result, outdir)."""
    outdir = tmp_path / "run"

    def run(*args, images=None):
        images = images if images is not None else subject_images(tmp_path / "subject")
        result = cli("tune", "-m", tiny["sd1"], "--images", images, "--class", "shape", "-o", outdir,
                     "--device", "cpu", *args)
        return result, outdir

    return run


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (("--rank", "0"), "rank 0 is too small"),
        (("--lr", "0"), "lr 0 must be positive"),
        (("--lr", "-1e-4"), "lr -0.0001 must be positive"),
        (("--steps", "0"), "steps 0 is too small"),
        (("--alpha", "0"), "alpha 0 must be positive"),
        (("--resolution", "100"), "resolution 100 is not a multiple of 8"),
        (("--mixed-precision", "fp8"), "unknown mixed precision 'fp8'"),
        (("--mixed-precision", "fp16"), "fp16 needs a GPU"),
        (("--export", "ckpt"), "unknown export format 'ckpt'"),
        (("--token", "two words"), "one word without spaces"),
        (("--resume", "--overwrite"), "contradict"),
        (("--resume",), "--resume: no checkpoint"),
        (("--8bit-adam",), "bitsandbytes"),
        (("--layers", "conv"), "unknown layers 'conv': use attention or all"),
        (("--quantize", "fp8"), "--quantize fp8 needs --mixed-precision bf16 or fp16"),
        (("--quantize", "nf4", "--mixed-precision", "bf16"), "--quantize nf4 is not supported by dream tune yet"),
        (("--quantize", "fp4", "--mixed-precision", "bf16"), "unknown quantize 'fp4': use none or fp8"),
    ],
)
def test_bad_values_exit_2_and_write_nothing(tune_cli, args, words):
    if words == "bitsandbytes" and _has_bnb():
        pytest.skip("bitsandbytes is installed here")
    result, outdir = tune_cli(*args)
    assert result.exit_code == 2
    assert words in one_error_line(result)
    assert not outdir.exists()


def _has_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def test_missing_empty_and_unreadable_image_folders(tune_cli, tmp_path):
    result, outdir = tune_cli(images=tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in one_error_line(result)
    empty = tmp_path / "empty"
    empty.mkdir()
    result, _ = tune_cli(images=empty)
    assert result.exit_code == 2 and "is empty" in one_error_line(result)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a picture")
    (junk / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result, _ = tune_cli(images=junk)
    line = one_error_line(result)
    assert result.exit_code == 2 and "no readable images" in line and "broken.png" in line and "notes.txt" in line
    assert not outdir.exists()


def test_class_dir_with_unreadable_files_is_refused(tune_cli, tmp_path):
    own = tmp_path / "class"
    own.mkdir()
    Image.new("RGB", (32, 32)).save(own / "good.png")
    (own / "bad.jpg").write_bytes(b"nope")
    result, outdir = tune_cli("--class-dir", own)
    assert result.exit_code == 2 and "bad.jpg" in one_error_line(result)
    assert not outdir.exists()


@pytest.mark.parametrize("model, label", [("pixart-sigma", "PixArt-Σ"), ("kandinsky22", "Kandinsky 2.2")])
def test_untunable_families_are_refused_by_name(cli, families, tmp_path, model, label):
    result = cli("tune", "-m", families[model], "--images", subject_images(tmp_path / "s"), "--class", "shape",
                 "-o", tmp_path / "run")
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"error: dream tune supports SD 1.x, SD 2.x, SDXL, SD3 and Flux.1 models, not {label}: use one of those"
    )
    assert not (tmp_path / "run").exists()


def test_warnings_for_few_and_small_images_do_not_stop(tiny, tmp_path):
    from dreamcli.requests import TuneConfig
    from dreamcli.training import check_inputs

    folder = subject_images(tmp_path / "two", count=2, size=24)
    (folder / "readme.txt").write_text("captions")
    inputs = check_inputs(TuneConfig(str(folder), "shape", str(tiny["sd1"]), str(tmp_path / "run")))
    text = "\n".join(inputs.warnings)
    assert "only 2 instance image(s)" in text
    assert "smaller than the training resolution 32px" in text and "subject-0.png 24x24" in text
    assert "readme.txt" in text  # skipped, and said so
    assert len(inputs.instance_images) == 2


def test_cli_run_then_refuse_a_different_run_then_resume_and_overwrite(tune_cli):
    args = ("--steps", "2", "--class-images", "1", "--checkpoint-every", "1", "--validation-images", "0", "-q")
    result, outdir = tune_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(outdir / "pytorch_lora_weights.safetensors")]

    again, _ = tune_cli(*args)
    assert again.exit_code == 2 and "already holds this run" in one_error_line(again)
    other, _ = tune_cli(*args, "--rank", "8")
    assert other.exit_code == 2 and "already holds a different run" in one_error_line(other)
    changed, _ = tune_cli(*args[:1], "4", *args[2:], "--rank", "8", "--resume")
    assert changed.exit_code == 2 and "rank 4 -> 8" in one_error_line(changed)

    more, _ = tune_cli("--steps", "3", *args[2:], "--resume", "--json")
    assert more.exit_code == 0, more.stderr
    assert json.loads(more.stdout)["steps"] == 3
    log = [json.loads(line)["step"] for line in (outdir / "loss_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]

    fresh, _ = tune_cli(*args, "--rank", "8", "--overwrite")
    assert fresh.exit_code == 0, fresh.stderr
    record = json.loads((outdir / "tune_config.json").read_text())
    assert record["settings"]["rank"] == 8 and record["step"] == 2
    assert [p.name for p in sorted((outdir / "checkpoints").iterdir())] == ["step-000001", "step-000002"]


def test_the_demo_presets_tune_table_is_used_and_flags_win():
    from dreamcli.cli.tune import tune_config_from

    flags = {"images": "photos", "class_word": "shape"}
    preset = tune_config_from(flags, {"preset": "demo"})
    assert (preset.lora_layers, preset.train_text_encoder, preset.max_train_steps, preset.rank) == ("all", True, 800, 8)
    assert preset.class_guidance == 2.0  # class pictures are made with the preset's own sampling settings
    mine = tune_config_from({**flags, "layers": "attention", "train_text_encoder": False, "steps": 50},
                            {"preset": "demo"})
    assert (mine.lora_layers, mine.train_text_encoder, mine.max_train_steps) == ("attention", False, 50)


def test_alias_and_help(cli):
    result = cli("dreambooth-tune", "--help")
    assert result.exit_code == 0 and "--prior-weight" in result.stdout and "--export" in result.stdout


def test_ctrl_c_exits_130_and_says_how_to_resume(tune_cli, monkeypatch):
    import dreamcli.training

    def interrupted(config, inputs, **callbacks):
        from dreamcli.training.rundir import checkpoint_dir, seal_checkpoint

        folder = checkpoint_dir(Path(config.output_dir), 7)
        folder.mkdir(parents=True)
        seal_checkpoint(folder, 7)  # as tune leaves it on Ctrl-C: marked complete
        raise KeyboardInterrupt

    monkeypatch.setattr(dreamcli.training, "tune", interrupted)
    result, outdir = tune_cli("--steps", "10")
    assert result.exit_code == 130
    assert "checkpoint at step 7 saved" in result.stderr and "--resume" in result.stderr
    assert result.stdout == ""


def test_a_run_stopped_before_its_first_checkpoint_is_started_over(tiny, tmp_path):
    from dreamcli.requests import TuneConfig
    from dreamcli.training import check_inputs

    outdir = tmp_path / "run"
    outdir.mkdir()
    (outdir / "tune_config.json").write_text('{"settings": {}, "status": "interrupted"}')
    (outdir / "loss_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    config = TuneConfig(str(subject_images(tmp_path / "s")), "shape", str(tiny["sd1"]), str(outdir))
    assert check_inputs(config).start_over


def test_a_peft_too_old_for_the_installed_transformers_is_one_line_before_anything_is_written(tune_cli, monkeypatch):
    # transformers 5.24 raised its minimum peft to 0.22 while the newest peft was 0.21: a fresh install
    # got that pair. The same check reads the minimum from transformers, so raise it past any peft.
    from importlib.metadata import version

    import transformers.integrations.peft as transformers_peft

    from dreamcli.config import cache_dir

    def cached() -> list[Path]:  # other tests of the session fill the class-image cache too
        return sorted((cache_dir() / "class-images").rglob("*"))

    before = cached()
    monkeypatch.setattr(transformers_peft, "MIN_PEFT_VERSION", "99.0.0")
    result, outdir = tune_cli("--train-text-encoder")
    line = one_error_line(result)
    assert result.exit_code == 1
    assert f"transformers {version('transformers')} needs peft >= 99.0.0, but peft {version('peft')}" in line
    assert "pip install 'peft>=99.0.0'" in line
    assert not outdir.exists() and cached() == before
    # UNet adapters need only diffusers' minimum, which the installed peft meets.
    result, outdir = tune_cli("--no-train-text-encoder", "--steps", "1", "--no-prior")
    assert result.exit_code == 0, result.stderr


def test_a_preset_with_a_sampling_value_of_the_wrong_type_is_one_line(cli, tiny, tmp_path):
    from dreamcli.config import dreamcli_home

    presets = dreamcli_home() / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    preset = presets / "bad-steps.toml"
    preset.write_text(f'model = "{tiny["sd1"]}"\nsteps = "many"\n')
    try:
        result = cli("tune", "--preset", "bad-steps", "--images", subject_images(tmp_path / "s"), "--class", "shape",
                     "-o", tmp_path / "run", "--device", "cpu")
    finally:
        preset.unlink()
    assert result.exit_code == 2
    assert "steps for class images must be a whole number" in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_offload_on_the_cpu_says_it_changes_nothing(tune_cli):
    result, outdir = tune_cli("--offload", "--steps", "1", "--class-images", "1", "--validation-images", "0")
    assert result.exit_code == 0, result.stderr
    assert "--offload changes nothing here: on the CPU every model is in CPU memory already" in result.stderr
    assert (outdir / "pytorch_lora_weights.safetensors").is_file()
