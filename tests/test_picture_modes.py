"""Every image command on odd pictures: CMYK, palette, 16-bit, EXIF-rotated, transparent (alpha kept), truncated
and bomb files (one line, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, written
from dreamcli.imageops.color import luma
from dreamcli.io.images import load_rgb
from image_task_helpers import assert_refused, save, texture
from test_bad_pictures import bomb_png

COMMANDS = ["inpaint", "outpaint", "colorize", "upscale", "img2img", "restore"]


def centre_mask(size, path):
    """A mask of the given (upright) size, white in the middle half."""
    w, h = size
    mask = Image.new("L", size, 0)
    mask.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    return save(mask, path)


@pytest.fixture
def run(cli, tiny, tmp_path):
    """`dream COMMAND PICTURE x ...` on the tiny SD1 model, with what each command needs: (result, outdir)."""
    outdir = tmp_path / "out"

    def go(command, picture, *args, size=None):
        extra = {
            "inpaint": ["--mask", centre_mask(size or load_rgb(picture).size, tmp_path / "m.png"), "--mask-blur", 0],
            "outpaint": ["--right", 8],
            "upscale": ["--scale", 2, "--strength", 0.5],
            "img2img": ["--strength", 0.5],
            "restore": ["--strength", 0.5],
        }.get(command, [])
        result = cli(command, picture, "x", *extra, *args, "-m", tiny["sd1"], "--steps", 2, "-s", 1, "-o", outdir,
                     "-q")
        return result, outdir

    return go


def assert_kept(command, out_path, reference: Image.Image) -> None:
    """The part of the output each command keeps from its input matches the input as read upright in RGB."""
    out, ref = Image.open(out_path), reference.convert("RGB")
    w, h = ref.size
    if command == "inpaint":
        assert out.size == (w, h)
        assert np.array_equal(pixels(out_path)[: h // 4], np.asarray(ref, np.int16)[: h // 4])
    elif command == "outpaint":
        assert out.size == (w + 8, h)
        assert np.array_equal(pixels(out_path)[:, :w], np.asarray(ref, np.int16))
    elif command == "colorize":
        assert out.size == (w, h)
        assert np.abs(luma(out) - luma(ref)).mean() <= 1.0
    elif command == "upscale":
        assert out.size == (2 * w, 2 * h)
        shrunk = np.asarray(out.convert("RGB").resize((w, h), Image.Resampling.BOX), np.float64)
        assert np.abs(shrunk - np.asarray(ref, np.float64)).mean() < 4
    elif command == "restore":  # the picture's own size, whatever the model (a random one here) draws
        assert out.size == (w, h)
    else:  # img2img draws at the picture's shape: a portrait stays a portrait
        assert (out.width > out.height) == (w > h)


def _cmyk(path):
    texture(24, 16).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
    return path.with_suffix(".jpg")


def _palette(path):
    texture(24, 16).convert("P", palette=Image.Palette.ADAPTIVE).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _grey16(path):
    Image.fromarray(np.asarray(texture(24, 16).convert("L"), np.uint16) * 257).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24x16, shown 16x24 (turned a quarter clockwise)
    texture(24, 16).save(path.with_suffix(".jpg"), exif=exif.tobytes(), quality=95)
    return path.with_suffix(".jpg")


MODES = {"cmyk": _cmyk, "palette": _palette, "16-bit": _grey16, "exif-rotated": _exif_rotated}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("command", COMMANDS)
def test_odd_pictures_come_out_right_in_every_command(run, tmp_path, command, mode):
    picture = MODES[mode](tmp_path / "in")
    reference = load_rgb(picture)  # upright 8-bit RGB: what every command works from
    if mode == "cmyk":  # read as the colours it shows, not inverted or washed out
        assert np.abs(np.asarray(reference, np.float64) - np.asarray(texture(24, 16), np.float64)).mean() < 12
    if mode == "exif-rotated":
        assert reference.size == (16, 24)
    result, outdir = run(command, picture)
    assert result.exit_code == 0, result.stderr
    (out,) = written(outdir)
    assert Image.open(out).mode == "RGB"
    assert_kept(command, out, reference)


def _transparent(tmp_path, mode="RGBA"):
    """24x16 with its left third fully transparent (hiding black) and the rest opaque."""
    picture = texture(24, 16).convert(mode[:-1] if mode != "RGBA" else "RGB").convert(mode)
    alpha = Image.new("L", (24, 16), 255)
    alpha.paste(0, (0, 0, 8, 16))
    picture.putalpha(alpha)
    picture = Image.composite(picture, Image.new(mode, (24, 16), 0), alpha)  # hidden pixels: black
    return save(picture, tmp_path / f"cut-{mode}.png"), picture


@pytest.mark.parametrize("command", COMMANDS)
def test_transparent_pictures_keep_their_alpha(run, tmp_path, command):
    path, picture = _transparent(tmp_path)
    result, outdir = run(command, path)
    assert result.exit_code == 0, result.stderr
    out = Image.open(written(outdir)[0])
    assert out.mode == "RGBA"
    rgba, before = np.asarray(out, np.int16), np.asarray(picture, np.int16)
    a = rgba[..., 3]
    if command == "inpaint":  # outside the mask the RGBA is the input's exactly; repainted pixels are opaque
        assert np.array_equal(rgba[:4], before[:4]) and a[4:12, 6:18].min() == 255
    elif command == "outpaint":  # the original region exactly, the new strip opaque
        assert np.array_equal(rgba[:, :24], before) and a[:, 24:].min() == 255
    elif command == "colorize":
        assert np.array_equal(a, before[..., 3])
        assert np.abs(luma(out.convert("RGB"))[:, 8:] - luma(picture.convert("RGB"))[:, 8:]).mean() <= 1.0
    else:  # enlarged with the picture: upscale 2x (48x32), img2img at its working size (40x24)
        third = out.width // 3  # the resampling filter softens the edge over a few pixels
        assert a[:, : third - 5].max() <= 3 and a[:, third + 5:].min() >= 252


def test_alpha_taken_off_and_put_back_gives_the_picture_again():
    """The model sees the picture laid on white; putting the alpha back un-blends the white, so soft edges keep
    their own colour (no white fringe on a dark background) and the result laid on white is what was drawn."""
    from dreamcli.io.images import split_alpha, to_rgb, with_alpha

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    levels = rng.choice(np.array([0, 64, 128, 200, 255], np.uint8), (16, 24))
    picture = Image.fromarray(np.dstack([colours, levels]), "RGBA")
    flat, alpha = split_alpha(picture)
    assert np.asarray(flat)[levels == 0].min() == 255  # transparent: white, whatever colour it hid
    back = with_alpha(flat, alpha)
    assert np.array_equal(np.asarray(back)[..., 3], levels)
    seen = levels >= 64
    assert np.abs(np.asarray(back, np.int16)[..., :3][seen] - colours[seen].astype(np.int16)).max() <= 2
    assert np.abs(np.asarray(to_rgb(back), np.int16) - np.asarray(flat, np.int16)).max() <= 1
    assert split_alpha(picture.convert("RGB").convert("RGBA"))[1] is None  # opaque RGBA: an RGB output


@pytest.mark.parametrize("command", ["colorize", "upscale"])
def test_a_grey_picture_with_alpha_keeps_it(run, tmp_path, command):
    path, picture = _transparent(tmp_path, "LA")
    result, outdir = run(command, path)
    assert result.exit_code == 0, result.stderr
    out = Image.open(written(outdir)[0])
    assert out.mode == "RGBA"
    a = np.asarray(out.getchannel("A"))
    assert a[:, :4].max() <= 3 and a[:, -4:].min() >= 252


def test_jpg_output_of_a_transparent_picture_is_laid_on_white_with_a_note(run, tmp_path):
    path, _ = _transparent(tmp_path)
    result, outdir = run("colorize", path, "--format", "jpg")
    assert result.exit_code == 0, result.stderr
    out = Image.open(written(outdir)[0])
    assert out.mode == "RGB" and out.format == "JPEG"
    assert np.asarray(out)[:, :6].min() >= 235  # the transparent third: white, not the black it hid
    assert "jpg has no transparency" in result.stderr


@pytest.mark.parametrize("command", COMMANDS + ["inpaint --mask"])
def test_a_truncated_picture_is_one_line_and_exit_2(cli, tiny, tmp_path, command):
    good = save(texture(48, 32), tmp_path / "good.png")
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    mask = centre_mask((48, 32), tmp_path / "m.png")
    extra = {"inpaint": ["--mask", mask], "outpaint": ["--right", 8], "upscale": ["--strength", 0.5]}
    picture, extra = cut, extra.get(command, [])
    if command == "inpaint --mask":
        picture, extra, command = good, ["--mask", cut], "inpaint"
    outdir = tmp_path / "out"
    result = cli(command, picture, "x", *extra, "-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q")
    assert_refused(result, outdir, "cut.png", "truncated", "damaged")


def test_img2img_refuses_a_decompression_bomb_from_its_header(cli, tiny, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 50_000, 50_000)
    outdir = tmp_path / "out"
    result = cli("img2img", bomb, "x", "-m", tiny["sd1"], "--steps", 2, "-o", outdir, "-q")
    assert_refused(result, outdir, "bomb.png", "2500 megapixels", "decompression bomb")
