"""ControlNet: tiny ControlNets made from the tiny UNets (`ControlNetModel.from_unet`), canny edges, records.

A ControlNet made from a UNet starts with zero output convolutions: it adds nothing, so the picture must equal
the one made without it, pixel for pixel. Once those layers are perturbed it steers: the picture must change.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels, written
from image_task_helpers import assert_refused


def make_controlnet(unet_folder, folder, perturb: bool, seed: int = 0):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    # The tiny VAE halves each side, so the map's embedding downsamples once (16 -> 32 channels), not 8x.
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    if perturb:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
    net.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nets(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    out = {
        "zero": make_controlnet(tiny["sd1"] / "unet", root / "zero", perturb=False),
        "sd1": make_controlnet(tiny["sd1"] / "unet", root / "sd1", perturb=True),
        "sdxl": make_controlnet(tiny["sdxl"] / "unet", root / "sdxl", perturb=True, seed=1),
    }
    square = np.zeros((32, 32, 3), np.uint8)
    square[8:24, 8:24] = 255
    Image.fromarray(square).save(root / "square.png")
    out["square"] = root / "square.png"
    return out


def gen(cli, tmp_path, model, *args, name="out"):
    outdir = tmp_path / name
    return cli("gen", "-m", model, "a thing", "--steps", 2, "-s", 5, "-o", outdir, "-q", *args), outdir


def only_picture(result, outdir):
    assert result.exit_code == 0, result.stderr
    files = written(outdir)
    assert len(files) == 1 and result.stdout.strip() == str(files[0])
    return files[0]


def test_canny_finds_the_border_of_a_white_square_and_nothing_else():
    from dreamcli.imageops.control import canny

    picture = np.zeros((64, 64), np.uint8)
    picture[16:48, 16:48] = 255
    edges = np.asarray(canny(Image.fromarray(picture)).convert("L")) > 0
    ys, xs = np.nonzero(edges)
    # Every edge pixel lies within a pixel of the square's border, and the border is found all round.
    distance = np.minimum.reduce([np.abs(ys - 15.5), np.abs(ys - 47.5), np.abs(xs - 15.5), np.abs(xs - 47.5)])
    assert distance.max() <= 1.0
    assert not edges[20:44, 20:44].any() and not edges[:12].any() and not edges[52:].any()
    for row in (24, 32, 40):  # both sides found on every row and column through the square
        assert edges[row, 14:18].any() and edges[row, 46:50].any()
        assert edges[14:18, row].any() and edges[46:50, row].any()
    # A high threshold above every gradient finds nothing.
    assert not (np.asarray(canny(Image.fromarray(picture), 2000, 3000).convert("L")) > 0).any()


def test_a_zero_controlnet_changes_nothing_and_a_perturbed_one_steers(cli, tmp_path, tiny, nets):
    plain, _ = gen(cli, tmp_path, tiny["sd1"], name="plain")
    zero, zero_dir = gen(cli, tmp_path, tiny["sd1"], "--control", f"canny:{nets['square']}",
                         "--control-model", f"canny={nets['zero']}", name="zero")
    steered, steered_dir = gen(cli, tmp_path, tiny["sd1"], "--control", f"canny:{nets['square']}",
                               "--control-model", f"canny={nets['sd1']}", name="steered")
    base = pixels(only_picture(plain, tmp_path / "plain"))
    assert np.array_equal(pixels(only_picture(zero, zero_dir)), base)
    path = only_picture(steered, steered_dir)
    assert np.abs(pixels(path) - base).max() > 10
    meta = Image.open(path).info
    record = json.loads(meta["dreamcli"])
    unit = record["control"][0]
    assert unit["type"] == "canny" and unit["module"] == "canny" and unit["model"] == str(nets["sd1"])
    assert unit["image"] == str(nets["square"].resolve())
    assert unit["image_sha256"] == hashlib.sha256(nets["square"].read_bytes()).hexdigest()
    assert record["request"]["control"][0]["scale"] == 1.0
    text = meta["parameters"]
    assert 'ControlNet 0: "Module: canny, Model: sd1 [' in text
    assert "Weight: 1, " in text and "Guidance Start: 0, Guidance End: 1" in text


def test_from_re_makes_a_controlled_picture_and_names_a_missing_control_image(cli, tmp_path, tiny, nets):
    mine = tmp_path / "edges.png"
    shutil.copy(nets["square"], mine)
    first, first_dir = gen(cli, tmp_path, tiny["sd1"], "--control", f"canny:{mine}:0.7", "--control-model",
                           f"canny={nets['sd1']}", "--control-end", 0.6, name="first")
    source = only_picture(first, first_dir)
    again = cli("gen", "--from", source, "-o", tmp_path / "again", "-q")
    assert np.array_equal(pixels(only_picture(again, tmp_path / "again")), pixels(source))
    assert "Weight: 0.7" in Image.open(source).info["parameters"]
    assert "Guidance End: 0.6" in Image.open(source).info["parameters"]
    # --control-model swaps a recorded unit's model: the zero ControlNet gives the uncontrolled picture.
    swapped = cli("gen", "--from", source, "--control-model", f"canny={nets['zero']}", "-o", tmp_path / "swap", "-q")
    plain, plain_dir = gen(cli, tmp_path, tiny["sd1"], name="plain")
    assert np.array_equal(pixels(only_picture(swapped, tmp_path / "swap")), pixels(only_picture(plain, plain_dir)))
    Image.new("RGB", (32, 32), "white").save(mine)  # another picture at the same path
    changed = cli("gen", "--from", source, "-o", tmp_path / "changed", "-q")
    assert_refused(changed, tmp_path / "changed", "different control image", str(mine))
    mine.unlink()
    gone = cli("gen", "--from", source, "-o", tmp_path / "gone", "-q")
    assert_refused(gone, tmp_path / "gone", str(mine), "not there")


def test_img2img_and_inpaint_take_several_controlnets(cli, tmp_path, tiny, nets):
    square = str(nets["square"])
    both = ["--control", f"canny:{square}", "--control", f"raw:{square}:0.5", "--control-model",
            f"canny={nets['sd1']}", "--control-model", f"raw={nets['zero']}", "--steps", 2, "-s", 3, "-q"]
    img = cli("img2img", square, "a thing", "-m", tiny["sd1"], "-o", tmp_path / "img", *both)
    path = only_picture(img, tmp_path / "img")
    text = Image.open(path).info["parameters"]
    assert 'ControlNet 0: "Module: canny' in text and 'ControlNet 1: "Module: none' in text and "Weight: 0.5" in text
    mask = tmp_path / "mask.png"
    half = np.zeros((32, 32), np.uint8)
    half[:, 16:] = 255
    Image.fromarray(half).save(mask)
    paint = cli("inpaint", square, "a thing", "--mask", mask, "--mask-blur", 0, "-m", tiny["sd1"],
                "-o", tmp_path / "paint", *both)
    out = pixels(only_picture(paint, tmp_path / "paint"))
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out[:, :16], pixels(square)[:, :16])  # outside the mask: the input, exactly
    record = json.loads(Image.open(written(tmp_path / "paint")[0]).info["dreamcli"])
    assert [unit["type"] for unit in record["control"]] == ["canny", "raw"]


def test_sdxl_controlnet_with_guess_mode_and_a_preset_table(cli, tmp_path, tiny, nets, monkeypatch):
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    shutil.copytree(nets["sdxl"], home / "presets" / "cn")
    (home / "presets" / "tinyxl.toml").write_text(
        f'model = "{tiny["sdxl"]}"\nwidth = 32\nheight = 32\n\n[control]\ncanny = "./cn"\n')
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    plain, plain_dir = gen(cli, tmp_path, "tinyxl", name="plain")
    steered, steered_dir = gen(cli, tmp_path, "tinyxl", "--control", f"canny:{nets['square']}", "--guess-mode",
                               "--control-start", 0.5, name="steered")
    path = only_picture(steered, steered_dir)
    assert not np.array_equal(pixels(path), pixels(only_picture(plain, plain_dir)))
    text = Image.open(path).info["parameters"]
    assert "Control Mode: ControlNet is more important" in text and "Guidance Start: 0.5" in text
    assert json.loads(Image.open(path).info["dreamcli"])["control"][0]["model"] == str(home / "presets" / "cn")


@pytest.mark.parametrize("args, words", [
    (["--control", "blur:{square}", "--control-model", "blur={sd1}"], ["unknown control type 'blur'", "canny"]),
    (["--control", "canny:{missing}", "--control-model", "canny={sd1}"], ["control image", "not found"]),
    (["--control", "canny:{square}"], ["no ControlNet model for control type canny", "--control-model canny=REF"]),
    (["--control", "canny", "--control-model", "canny={sd1}"], ["TYPE:IMAGE[:SCALE]"]),
    (["--control", "canny:{square}", "--control-model", "canny={sdxl}"], ["made for another model", "SD 1.x"]),
    (["--control", "canny:{square}", "--control-model", "canny={missing}"], ["ControlNet", "not found"]),
    (["--control", "canny:{square}", "--control-model", "canny={sd1}", "--control-start", "0.9",
      "--control-end", "0.2"], ["control start 0.9 and end 0.2"]),
])
def test_bad_control_input_is_one_line_and_writes_nothing(cli, tmp_path, tiny, nets, args, words):
    values = {"square": nets["square"], "sd1": nets["sd1"], "sdxl": nets["sdxl"], "missing": tmp_path / "nope.png"}
    result, outdir = gen(cli, tmp_path, tiny["sd1"], *[a.format(**values) for a in args])
    assert_refused(result, outdir, *words)


def test_a_controlnet_aux_type_without_the_package_says_how(cli, tmp_path, tiny, nets, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "controlnet_aux" else
                        real(name, *a))
    result, outdir = gen(cli, tmp_path, tiny["sd1"], "--control", f"depth:{nets['square']}", "--control-model",
                         f"depth={nets['sd1']}")
    assert_refused(result, outdir, "pip install controlnet-aux", "lllyasviel/Annotators")


@pytest.fixture(scope="module")
def others(tmp_path_factory):
    """Tiny SD3, Flux and PixArt-Σ folders, and zero and perturbed ControlNets made from the SD3 and Flux
    transformers (`from_transformer`)."""
    import diffusers

    import tiny_families as tf
    import tiny_models as tm

    root = tmp_path_factory.mktemp("control-families")
    clip, t5 = tm.write_tokenizer(root / "clip"), tf.write_t5_tokenizer(root / "t5")
    sd3, flux = tf.build_sd3(clip, t5), tf.build_flux(clip, t5)
    tf.build_pixart_sigma(t5).save_pretrained(root / "pixart")
    out = {"pixart": root / "pixart"}
    for name, pipe in (("sd3", sd3), ("flux", flux)):
        pipe.save_pretrained(root / name)
        out[name] = root / name
        if name == "sd3":
            net = diffusers.SD3ControlNetModel.from_transformer(pipe.transformer, num_layers=1,
                                                                num_extra_conditioning_channels=0)
            heads = list(net.controlnet_blocks)
        else:
            net = diffusers.FluxControlNetModel.from_transformer(pipe.transformer, num_layers=1, num_single_layers=1,
                                                                 attention_head_dim=16, num_attention_heads=2)
            heads = [*net.controlnet_blocks, *net.controlnet_single_blocks]
        net.save_pretrained(root / f"{name}-zero")
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for layer in heads:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
        net.save_pretrained(root / f"{name}-net")
        out[f"{name}-zero"], out[f"{name}-net"] = root / f"{name}-zero", root / f"{name}-net"
    return out


def test_sdxl_controlnet_union_reads_several_maps_with_one_model(cli, tmp_path, tiny, nets):
    from diffusers import ControlNetUnionModel

    # ControlNetUnionModel.from_unet hardcodes 320 channels (diffusers 0.42): the tiny one is built from a config.
    union = ControlNetUnionModel(
        in_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), block_out_channels=(16, 32),
        layers_per_block=1, cross_attention_dim=80, norm_num_groups=8, attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        conditioning_embedding_out_channels=(16, 32), num_trans_channel=16, num_trans_head=2, num_proj_channel=16)
    models = tmp_path / "models"
    union.save_pretrained(models / "union-zero")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in [*union.controlnet_down_blocks, union.controlnet_mid_block]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
    union.save_pretrained(models / "union")
    square = str(nets["square"])
    pictures = []
    for name in ("union-zero", "union"):
        args = ["--control", f"canny:{square}", "--control", f"canny:{square}:1", "--control-model",
                f"canny={models / name}"]
        result, outdir = gen(cli, tmp_path, tiny["sdxl"], *args, name=name)
        pictures.append(pixels(only_picture(result, outdir)))
    plain, plain_dir = gen(cli, tmp_path, tiny["sdxl"], name="plain")
    assert np.array_equal(pictures[0], pixels(only_picture(plain, plain_dir)))
    assert np.abs(pictures[1] - pictures[0]).max() > 10
    img = cli("img2img", square, "a thing", "-m", tiny["sdxl"], "--steps", 2, "-q", "-o", tmp_path / "img",
              "--control", f"canny:{square}", "--control-model", f"canny={models / 'union'}")
    record = json.loads(Image.open(only_picture(img, tmp_path / "img")).info["dreamcli"])
    assert record["pipeline"] == "StableDiffusionXLControlNetUnionImg2ImgPipeline"
    raw = cli("gen", "-m", tiny["sdxl"], "x", "--steps", 2, "-q", "-o", tmp_path / "raw", "--control",
              f"raw:{square}", "--control-model", f"raw={models / 'union'}")
    assert_refused(raw, tmp_path / "raw", "ControlNet-Union", "raw map")


def test_sd3_and_flux_controlnets_steer(cli, tmp_path, others, nets):
    square = str(nets["square"])
    for family in ("sd3", "flux"):
        made = {}
        for name in ("zero", "net"):
            result, outdir = gen(cli, tmp_path, others[family], "-W", 32, "-H", 32, "--control", f"canny:{square}",
                                 "--control-model", f"canny={others[f'{family}-{name}']}", name=f"{family}-{name}")
            made[name] = pixels(only_picture(result, outdir))
        assert np.abs(made["net"] - made["zero"]).max() > 10, family
    # SD3's zero ControlNet leaves the picture as it was; Flux's pipeline draws the map's VAE latents from the
    # seed's generator before the noise (diffusers 0.42), so there only controlled pictures compare.
    plain, plain_dir = gen(cli, tmp_path, others["sd3"], "-W", 32, "-H", 32, name="sd3-plain")
    zero = pixels(written(tmp_path / "sd3-zero")[0])
    assert np.array_equal(pixels(only_picture(plain, plain_dir)), zero)
    both = ["--control", f"canny:{square}", "--control", f"raw:{square}", "--control-model",
            f"canny={others['flux-net']}", "--control-model", f"raw={others['flux-zero']}"]
    img = cli("img2img", square, "a thing", "-m", others["flux"], "--steps", 2, "-W", 32, "-H", 32, "-q", "-o",
              tmp_path / "img", *both)
    assert pixels(only_picture(img, tmp_path / "img")).shape == (32, 32, 3)
    no_img2img = cli("img2img", square, "x", "-m", others["sd3"], "--steps", 2, "-q", "-o", tmp_path / "sd3i",
                     "--control", f"canny:{square}", "--control-model", f"canny={others['sd3-net']}")
    assert_refused(no_img2img, tmp_path / "sd3i", "SD3 models have no control-img2img pipeline", "Flux.1")


def test_a_family_without_controlnets_is_refused(cli, tmp_path, nets, others):
    result, outdir = gen(cli, tmp_path, others["pixart"], "--control", f"canny:{nets['square']}",
                         "--control-model", f"canny={nets['sd1']}")
    assert_refused(result, outdir, "PixArt", "control", "SD 1.x")


def test_a_preset_control_table_with_a_typo_is_refused(cli, tmp_path, tiny, nets, monkeypatch):
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    (home / "presets" / "typo.toml").write_text(f'model = "{tiny["sd1"]}"\n\n[control]\ncany = "{nets["sd1"]}"\n')
    monkeypatch.setenv("DREAMCLI_HOME", str(home))
    result, outdir = gen(cli, tmp_path, "typo", "--control", f"canny:{nets['square']}")
    assert_refused(result, outdir, "[control] 'cany' is no control type", "canny")


def test_the_hires_pass_is_steered_too(cli, tmp_path, tiny, nets):
    """The second pass runs the ControlNet img2img pipeline (latents in, as the plain one takes them): a zero
    ControlNet still changes nothing, pixel for pixel, and a perturbed one changes the hires picture."""
    hires = ["--hires", 1.5, "--hires-steps", 2]
    plain, plain_dir = gen(cli, tmp_path, tiny["sd1"], *hires, name="plain")
    zero, zero_dir = gen(cli, tmp_path, tiny["sd1"], *hires, "--control", f"canny:{nets['square']}",
                         "--control-model", f"canny={nets['zero']}", name="zero")
    steered, steered_dir = gen(cli, tmp_path, tiny["sd1"], *hires, "--control", f"canny:{nets['square']}",
                               "--control-model", f"canny={nets['sd1']}", name="steered")
    base = pixels(only_picture(plain, plain_dir))
    assert base.shape[:2] == (48, 48)
    assert np.array_equal(pixels(only_picture(zero, zero_dir)), base)
    assert np.abs(pixels(only_picture(steered, steered_dir)) - base).max() > 10
    assert "note:" not in steered.stderr
