"""Bad files and a hostile disk: broken LoRAs, a full disk, and the modes outputs are created with.

Each failure is one `error: ` line naming the file and the cause; nothing half-written is left.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import pixels, written
from image_task_helpers import save, texture
from test_bad_input import assert_refused
from test_lora import make_diffusers_lora, make_kohya_lora


@pytest.fixture
def sd1_lora(tiny, tmp_path):
    return make_diffusers_lora(tiny["sd1"], tmp_path / "good.safetensors")


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---- LoRA files ----

@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:20], "truncated"),
        (lambda data: bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "header length"),
        (lambda data: b"", "the file is empty"),
        (lambda data: data[:5], "shorter than a safetensors header"),
        (lambda data: (20).to_bytes(8, "little") + b'{"a": [1, 2, 3]}    ' + b"\0" * 64, "does not describe tensors"),
        (lambda data: (8).to_bytes(8, "little") + b"\xff" * 8 + b"\0" * 64, "its header is not JSON"),
    ],
    ids=["truncated", "cut-in-header", "random-bytes", "empty", "five-bytes", "bad-header", "not-json"],
)
def test_an_unreadable_lora_file_is_one_line_naming_it(gen, sd1_lora, tmp_path, make, reason):
    bad = tmp_path / "broken lora.safetensors"
    bad.write_bytes(make(sd1_lora.read_bytes()))
    result, outdir = gen("x", "--lora", bad)
    assert_refused(result, outdir, f"LoRA {bad} is not a readable .safetensors file", reason)


def test_bad_lora_files_are_refused_before_the_model_is_loaded(gen, sd1_lora, tmp_path, monkeypatch):
    import dreamcli.engine as engine

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the LoRA was checked")

    engine.clear_cache()
    monkeypatch.setattr(engine, "load_base_pipeline", no_loading)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(sd1_lora.read_bytes()[:100])
    result, outdir = gen("x", "--lora", bad)
    assert_refused(result, outdir, "cut.safetensors", "not a readable")
    result, outdir = gen("x", "--lora", f"{sd1_lora}:abc")
    assert_refused(result, outdir, "scale 'abc'")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("lora_family, model_family, maker", [
    ("sdxl", "sd1", make_diffusers_lora),
    ("sdxl", "sd1", make_kohya_lora),
    ("sd1", "sdxl", make_diffusers_lora),
    ("sd1", "sdxl", make_kohya_lora),
], ids=["sdxl-on-sd1", "sdxl-kohya-on-sd1", "sd1-on-sdxl", "sd1-kohya-on-sdxl"])
def test_a_lora_for_another_family_is_our_line_without_the_libraries_dump(
    gen, tiny, tmp_path, capfd, lora_family, model_family, maker
):
    lora = maker(tiny[lora_family], tmp_path / f"{lora_family}_lora.safetensors")
    # diffusers logs every mismatched tensor through its own handler (not the CLI's stderr):
    # listen on its loggers to see whether it spoke.
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        result, outdir = gen("x", "--lora", lora, model=tiny[model_family])
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert_refused(result, outdir, f"LoRA {lora} does not fit model {model_family}", "size mismatch")
    assert handler.messages == []
    assert "size mismatch" not in capfd.readouterr().err
    # Hushed only while loading: the libraries' own errors still show elsewhere.
    assert [logger.level for logger in loggers] == levels


def test_a_lora_scale_that_is_no_number_says_so(gen, sd1_lora, tmp_path):
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(sd1_lora.read_bytes())
    for text in (f"{folder}:abc", f"{sd1_lora}:abc", f"{sd1_lora}:nan", f"{tmp_path}/gone.safetensors:x"):
        result, outdir = gen("x", "--lora", text)
        scale = text.rpartition(":")[2]
        assert_refused(result, outdir, f"LoRA scale '{scale}'", "is not a number", ":0.8")


def test_windows_style_and_colon_paths(gen, sd1_lora, tmp_path):
    result, outdir = gen("x", "--lora", "C:\\loras\\style.safetensors")
    assert_refused(result, outdir, "LoRA C:\\loras\\style.safetensors not found")

    plain = gen("a red circle", "-s", 3)[0]
    assert plain.exit_code == 0, plain.stderr
    colon = tmp_path / "style:v2.safetensors"  # a colon inside an existing name is part of the path
    colon.write_bytes(sd1_lora.read_bytes())
    images = []
    for text in (str(colon), f"{colon}:1", f"{sd1_lora}:1"):
        result, _ = gen("a red circle", "-s", 3, "--lora", text)
        assert result.exit_code == 0, result.stderr
        images.append(pixels(result.stdout.strip()))
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[1], images[2])
    assert np.abs(images[0] - pixels(plain.stdout.strip())).mean() > 1


def test_lora_folders_and_files_that_hold_no_lora(gen, tiny, sd1_lora, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result, outdir = gen("x", "--lora", empty)
    assert_refused(result, outdir, f"LoRA folder {empty} holds no .safetensors file")

    pickled = tmp_path / "old"
    pickled.mkdir()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_lora_weights.bin")
    result, outdir = gen("x", "--lora", pickled)
    assert_refused(result, outdir, "holds no .safetensors file", "pytorch_lora_weights.bin", "--allow-unsafe-pickle")

    no_tensors = tmp_path / "none.safetensors"
    save_file({}, str(no_tensors))
    result, outdir = gen("x", "--lora", no_tensors)
    assert_refused(result, outdir, f"LoRA {no_tensors} holds no weights")

    not_lora = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, str(not_lora))
    result, outdir = gen("x", "--lora", not_lora)
    assert_refused(result, outdir, f"LoRA {not_lora} does not fit model sd1")

    result, outdir = gen("x", "--lora", tiny["sd1_file"])
    assert_refused(result, outdir, "is a full SD 1.x checkpoint, not a LoRA", "-m")
    result, outdir = gen("x", "--lora", tiny["sd1"])
    assert_refused(result, outdir, "is a diffusers model, not a LoRA", "-m")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result, outdir = gen("x", "--lora", text)
    assert_refused(result, outdir, f"LoRA {text} is not a .safetensors file")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickle_loras_are_refused_and_a_broken_allowed_one_is_one_line(gen, tmp_path, suffix):
    bad = tmp_path / f"lora{suffix}"
    bad.write_bytes(b"not a pickle at all" * 20)
    result, outdir = gen("x", "--lora", bad)
    assert_refused(result, outdir, f"LoRA {bad.name} is a pickle", "--allow-unsafe-pickle")
    result, outdir = gen("x", "--lora", bad, "--allow-unsafe-pickle")
    assert_refused(result, outdir, f"LoRA {bad} is not a readable {suffix} file")


# ---- a full disk ----

def _failing_save(monkeypatch, fail_on: int, code: int):
    """Make the `fail_on`-th image save write a little and then fail as a full disk does."""
    real = Image.Image.save
    calls = []

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == fail_on:
            fp.write(b"\x89PNG half an image")
            raise OSError(code, os.strerror(code))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)


@pytest.mark.parametrize("code, cause", [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
], ids=["ENOSPC", "EDQUOT"])
def test_a_full_disk_keeps_finished_images_and_leaves_no_temporary_file(gen, monkeypatch, code, cause):
    _failing_save(monkeypatch, 2, code)
    result, outdir = gen("a red circle", "-n", 3, "-s", 5)
    assert result.exit_code == 1, result.stderr
    line = _one_error_line(result)
    assert f"cannot write {outdir}{os.sep}00001-6-a-red-circle.png: {cause}" in line, line
    assert "free some space" in line
    (kept,) = result.stdout.splitlines()
    assert os.listdir(outdir) == [os.path.basename(kept)]  # no .dream-*.part left behind
    Image.open(kept).load()  # the finished image is whole


def test_a_full_disk_in_an_image_to_image_command(cli, tiny, tmp_path, monkeypatch):
    source = save(texture(32, 32), tmp_path / "in.png")
    outdir = tmp_path / "out"
    _failing_save(monkeypatch, 1, errno.ENOSPC)
    result = cli("upscale", source, "-m", tiny["sd1"], "--steps", 2, "--strength", 0.5, "-o", outdir, "-q")
    assert result.exit_code == 1, result.stderr
    assert "no space left on device" in _one_error_line(result)
    assert result.stdout == ""
    assert os.listdir(outdir) == []


def test_a_full_disk_while_creating_the_output_folder(gen, monkeypatch):
    from pathlib import Path

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    result, outdir = gen("x")
    assert result.exit_code == 1, result.stderr
    assert f"cannot write {outdir}: no space left on device" in _one_error_line(result)


class _RustError(Exception):
    """What safetensors raises: not an OSError, the C library's words inside."""


@pytest.mark.parametrize("error, words", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/checkpoints/step-2/model.safetensors"),
     "cannot write /runs/x/checkpoints/step-2/model.safetensors: no space left on device"),
    (_RustError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                f'"{os.strerror(errno.ENOSPC)}" }})'),
     "no space left on device (_RustError)"),
], ids=["oserror", "library-error"])
def test_any_full_disk_is_one_line_and_exit_1(capsys, error, words):
    import typer

    from dreamcli.cli.common import user_errors

    with pytest.raises(typer.Exit) as stopped:
        with user_errors():
            raise error
    assert stopped.value.exit_code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_other_errors_keep_their_traceback():
    from dreamcli.cli.common import user_errors

    with pytest.raises(PermissionError):
        with user_errors():
            raise PermissionError(errno.EACCES, "Permission denied")


def test_a_full_disk_while_tune_writes_its_weights_is_one_line(cli, tiny, tmp_path, monkeypatch):
    import dreamcli.training.dreambooth as dreambooth
    from test_tune import subject_images

    def full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "pytorch_lora_weights.safetensors"))

    monkeypatch.setattr(dreambooth, "save_lora", full)
    outdir = tmp_path / "run"
    result = cli("tune", "-m", tiny["sd1"], "--images", subject_images(tmp_path / "subject"), "--class", "shape",
                 "-o", outdir, "--device", "cpu", "--steps", "1", "--class-images", "1", "--validation-images", "0",
                 "-q")
    assert result.exit_code == 1, result.stderr
    line = _one_error_line(result)
    # The first LoRA write is the checkpoint's (training/rundir.py decides what such a run leaves).
    assert f"cannot write {outdir}{os.sep}" in line and "pytorch_lora_weights.safetensors: no space left" in line


# ---- file modes ----

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_are_created_with_the_users_umask(gen, umask, mode):
    old = os.umask(umask)
    try:
        result, outdir = gen("a red circle", "-n", 2)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    files = written(outdir)
    assert len(files) == 2
    assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [mode, mode]
    assert stat.S_IMODE(outdir.stat().st_mode) == 0o777 & ~umask


def test_tune_weights_and_exports_follow_the_umask(cli, tiny, tmp_path):
    from test_tune import subject_images

    images = subject_images(tmp_path / "subject")
    outdir = tmp_path / "run"
    old = os.umask(0o022)
    try:
        result = cli("tune", "-m", tiny["sd1"], "--images", images, "--class", "shape", "-o", outdir,
                     "--device", "cpu", "--steps", "1", "--class-images", "1", "--validation-images", "0",
                     "--export", "kohya", "-q")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    weights = sorted(outdir.glob("*.safetensors"))
    assert [p.name for p in weights] == ["pytorch_lora_weights.safetensors", "run_kohya.safetensors"]
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in weights] == [oct(0o644)] * 2


def test_the_umask_is_read_without_being_changed():
    from dreamcli.io.outputs import current_umask

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was
    finally:
        os.umask(old)


def test_replaced_files_keep_the_old_contents_on_a_failed_write_and_follow_the_umask(tmp_path):
    # tune_config.json, class images and bench results are written through replacing().
    from dreamcli.io.outputs import replacing

    target = tmp_path / "tune_config.json"
    target.write_text("old")
    with pytest.raises(OSError), replacing(target, text=True) as f:
        f.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tune_config.json"]
    previous = os.umask(0o027)
    try:
        with replacing(target, text=True) as f:
            f.write("new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
