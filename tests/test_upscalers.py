"""`dream upscale --upscaler` and `--hires-upscaler NAME`: GAN/transformer upscalers through spandrel.

Files in the layouts people download (BasicSR RRDBNet with params_ema, x2plus, Compact, SwinIR; .pth and
.safetensors). A Compact model with a zero last layer enlarges exactly as nearest-neighbour does, which gives
known answers for tiling, blending, several passes and reduction; it also keeps the demo world's scenes.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny_upscalers as tu
from conftest import pixels, written
from image_task_helpers import assert_refused, save, texture


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscalers")
    return {
        "nearest4": tu.save_safetensors(tu.compact_state(4), root / "nearest-x4.safetensors"),
        "nearest2": tu.save_pth(tu.compact_state(2), root / "nearest-x2.pth", wrap=None),
        "rrdb4": tu.save_pth(tu.rrdb_state(4), root / "RealESRGAN_x4plus.pth"),
        "rrdb2": tu.save_pth(tu.rrdb_state(2), root / "RealESRGAN_x2plus.pth"),
        "swinir2": tu.save_safetensors(tu.swinir_state(2), root / "swinir-x2.safetensors"),
        "root": root,
    }


@pytest.fixture
def up(cli, tmp_path):
    """`dream upscale PICTURE --upscaler ...` into a fresh folder: (result, outdir)."""
    outdir = tmp_path / "out"

    def run(*args):
        return cli("upscale", *args, "-o", outdir, "-q"), outdir

    return run


def one(result) -> str:
    assert result.exit_code == 0, result.stderr
    (path,) = result.stdout.split()
    return path


def nearest(image: Image.Image, size) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(size, Image.Resampling.NEAREST), np.int16)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("tile", [None, 8, 16])
def test_a_nearest_model_gives_nearest_enlargement_whole_or_tiled(up, files, tmp_path, tile):
    picture = texture(37, 23)
    source = save(picture, tmp_path / "in.png")
    extra = ["--tile", tile, "--overlap", 4] if tile else []
    path = one(up(source, "--upscaler", files["nearest4"], *extra)[0])
    assert Image.open(path).size == (148, 92)
    # Tiles overlap and blend; where they agree the blend must give the same pixels back.
    assert np.array_equal(pixels(path), nearest(picture, (148, 92)))


def test_a_4x_model_asked_for_2x_runs_once_then_reduces(up, files, tmp_path):
    picture = texture(20, 14)
    path = one(up(save(picture, tmp_path / "in.png"), "--upscaler", files["nearest4"], "--scale", 2)[0])
    expected = picture.convert("RGB").resize((80, 56), Image.Resampling.NEAREST).resize((40, 28),
                                                                                        Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(path), np.asarray(expected, np.int16))


def test_a_2x_model_asked_for_4x_runs_twice(up, files, tmp_path):
    picture = texture(15, 11)
    path = one(up(save(picture, tmp_path / "in.png"), "--upscaler", files["nearest2"], "--scale", 4)[0])
    assert np.array_equal(pixels(path), nearest(picture, (60, 44)))


def test_transparency_is_kept(up, files, tmp_path):
    rgba = texture(16, 12).convert("RGBA")
    alpha = Image.new("L", (16, 12), 0)
    alpha.paste(255, (4, 3, 12, 9))
    rgba.putalpha(alpha)
    out = Image.open(one(up(save(rgba, tmp_path / "in.png"), "--upscaler", files["nearest4"])[0]))
    assert out.mode == "RGBA" and out.size == (64, 48)
    a = np.asarray(out.getchannel("A"))
    assert a[24, 32] == 255 and a[2, 2] == 0  # inside the opaque box, and the clear corner


# ---------------------------------------------------------------- file layouts and records


@pytest.mark.parametrize("name, size", [("rrdb4", (124, 84)), ("rrdb2", (62, 42)), ("swinir2", (62, 42))])
def test_real_layouts_load_and_give_the_exact_size(up, files, tmp_path, name, size):
    # 31x21: odd sides, so x2plus (multiple of 4) and SwinIR (at least 16 px) pad inside and crop back.
    scale = 2 if name.endswith("2") else 4
    result, _ = up(save(texture(31, 21), tmp_path / "odd.png"), "--upscaler", files[name], "--scale", scale,
                   "--json")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert Image.open(line["path"]).size == size
    assert line["task"] == "upscale" and line["model"] == str(files[name])


def test_the_record_names_the_upscaler_as_a1111_extras_do(up, cli, files, tmp_path):
    path = one(up(save(texture(12, 12), tmp_path / "in.png"), "--upscaler", files["rrdb4"])[0])
    params = Image.open(path).info["parameters"]
    assert params.startswith("Postprocess upscale by: 4, Postprocess upscaler: RealESRGAN_x4plus, ")
    record = json.loads(Image.open(path).info["dreamcli"])
    assert record["method"] == "upscaler" and record["upscaler"]["architecture"] == "ESRGAN"
    assert record["upscaler"]["scale"] == 4 and len(record["upscaler"]["hash"]) == 10
    assert "Postprocess upscaler: RealESRGAN_x4plus" in cli("info", path).stdout


def test_an_upscaler_alone_loads_no_diffusion_model(cli, files, tmp_path):
    # Without a picture-making model named anywhere the demo would load: it must not (no demo hint either).
    result = cli("upscale", save(texture(8, 8), tmp_path / "in.png"), "--upscaler", files["nearest4"],
                 "-o", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert "demo model" not in result.stderr


def test_with_strength_the_model_redraws_the_upscalers_result(up, files, tiny, tmp_path):
    picture = texture(16, 16)
    path = one(up(save(picture, tmp_path / "in.png"), "--upscaler", files["nearest4"], "--strength", 0.5,
                  "-m", tiny["sd1"], "--steps", 2, "-s", 1)[0])
    assert Image.open(path).size == (64, 64)
    params = Image.open(path).info["parameters"]
    assert "SD upscale upscaler: nearest-x4" in params and "Denoising strength: 0.5" in params
    assert not np.array_equal(pixels(path), nearest(picture, (64, 64)))  # the model changed it


# ---------------------------------------------------------------- names


def test_files_in_the_upscalers_folder_go_by_name(up, cli, files, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "upscalers").mkdir(parents=True)
    (home / "upscalers" / "Sharp-4x.safetensors").write_bytes(files["nearest4"].read_bytes())
    (home / "config.toml").write_text(f'[upscalers]\nmine = "{files["nearest2"]}"\n')
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    listing = dict(line.split("\t") for line in cli("upscale", "--upscaler", "list").stdout.splitlines())
    assert listing["Sharp-4x"].endswith("Sharp-4x.safetensors") and listing["mine"] == str(files["nearest2"])
    assert listing["RealESRGAN_x4"] == "ai-forever/Real-ESRGAN/RealESRGAN_x4.pth"  # built in, fetched on first use
    picture = texture(10, 10)
    path = one(up(save(picture, tmp_path / "in.png"), "--upscaler", "sharp-4x")[0])  # any case
    assert np.array_equal(pixels(path), nearest(picture, (40, 40)))
    assert "Postprocess upscaler: Sharp-4x" in Image.open(path).info["parameters"]
    assert Image.open(one(up(tmp_path / "in.png", "--upscaler", "mine", "--scale", 2)[0])).size == (20, 20)


def test_a_built_in_name_comes_from_the_hugging_face_cache(up, files, tmp_path):
    from conftest import put_in_hf_cache

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "RealESRGAN_x2.pth").write_bytes(files["nearest2"].read_bytes())
    put_in_hf_cache(folder, "ai-forever/Real-ESRGAN")  # as hf_hub_download leaves it; tests run offline
    picture = texture(9, 7)
    path = one(up(save(picture, tmp_path / "in.png"), "--upscaler", "RealESRGAN_x2", "--scale", 2)[0])
    assert np.array_equal(pixels(path), nearest(picture, (18, 14)))


def test_a_built_in_name_not_downloaded_yet_says_how_offline(up, tmp_path):
    result, outdir = up(save(texture(8, 8), tmp_path / "in.png"), "--upscaler", "4x-UltraSharp")
    assert result.exit_code == 1
    assert "cannot download 4x-UltraSharp.pth from lokCX/4x-Ultrasharp" in result.stderr
    assert not written(outdir)


# ---------------------------------------------------------------- refusals


def test_a_malicious_pth_runs_nothing(up, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"params_ema": Payload()}, f)
    result, outdir = up(save(texture(8, 8), tmp_path / "in.png"), "--upscaler", bad)
    assert_refused(result, outdir, "evil.pth holds more than tensors", "use a .safetensors version")
    assert not marker.exists()


def test_other_pickles_need_allow_unsafe_pickle(up, files, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(files["rrdb4"].read_bytes())
    result, outdir = up(save(texture(8, 8), tmp_path / "in.png"), "--upscaler", ckpt)
    assert_refused(result, outdir, "model.ckpt is a pickle", "--allow-unsafe-pickle")
    result, _ = up(tmp_path / "in.png", "--upscaler", ckpt, "--allow-unsafe-pickle")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("case, args, fragments", [
    ("unknown", ["--upscaler", "R-ESRGAN 4x+"], ["unknown upscaler 'R-ESRGAN 4x+'", "RealESRGAN_x4"]),
    ("missing", ["--upscaler", "gone.pth"], ["upscaler file gone.pth does not exist"]),
    ("scale", ["--upscaler", "NEAREST", "--scale", 9], ["scale 9 is not supported", "1 to 8"]),
    ("copies", ["--upscaler", "NEAREST", "-n", 2], ["same picture every time", "leave out -n 2"]),
    ("not-sr", ["--upscaler", "OTHER"], ["is not an architecture spandrel knows"]),
    ("damaged", ["--upscaler", "CUT"], ["cannot be read"]),
])
def test_bad_upscalers_exit_2_with_one_line_and_write_nothing(up, files, tmp_path, case, args, fragments):
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(files["nearest4"].read_bytes()[:200])
    names = {"NEAREST": str(files["nearest4"]), "OTHER": str(other), "CUT": str(cut)}
    result, outdir = up(save(texture(8, 8), tmp_path / "in.png"), *[names.get(a, a) for a in map(str, args)])
    assert_refused(result, outdir, *fragments)


def test_spandrel_leaves_no_torchvision_behind():
    """spandrel imports torchvision for two non-upscaler architectures; where torchvision cannot load, a
    stand-in serves that import only. diffusers and transformers probe for torchvision afterwards and must
    still find what is really installed."""
    code = ("import importlib.util, sys\n"
            "real = importlib.util.find_spec('torchvision')\n"
            "from dreamcli.upscalers import import_spandrel\n"
            "import_spandrel()\n"
            "import diffusers.utils.import_utils as iu\n"
            "print(real is None, importlib.util.find_spec('torchvision') is None, iu.is_torchvision_available())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == out[0] and out[2] == str(out[0] == "False")


# ---------------------------------------------------------------- hires fix with an upscaler


def test_hires_with_a_named_upscaler_keeps_the_scene_and_remakes_from(cli, files, tmp_path, monkeypatch):
    from dreamcli.demo.world import read

    home = tmp_path / "home"
    (home / "upscalers").mkdir(parents=True)
    (home / "upscalers" / "Nearest-2x.pth").write_bytes(files["nearest2"].read_bytes())
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    result = cli("gen", "a red circle on a blue background", "-s", 3, "--hires", 2, "--hires-upscaler",
                 "Nearest-2x", "-o", tmp_path / "o", "-q")
    path = one(result)
    image = Image.open(path)
    assert image.size == (256, 256)
    reading = read(image)
    assert (reading.color, reading.background, reading.shape) == ("red", "blue", "circle")
    assert "Hires upscaler: Nearest-2x" in image.info["parameters"]
    again = one(cli("gen", "--from", path, "-o", tmp_path / "again", "-q"))
    assert np.array_equal(pixels(again), pixels(path))


def test_hires_refuses_an_unknown_upscaler_before_loading(gen):
    result, outdir = gen("a red circle", "--hires", 2, "--hires-upscaler", "R-ESRGAN 4x+")
    assert_refused(result, outdir, "unknown hires-upscaler 'R-ESRGAN 4x+'", "latent, lanczos")
