"""Pure image operations: masks, canvases, recolouring and tiles (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dreamcli.errors import InputError
from dreamcli.imageops import canvas, color, masks, resample, tiles


def gradient(w: int, h: int) -> Image.Image:
    """A colourful test picture with no two neighbouring pixels alike."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# ---- masks ----

def test_mask_brightness_and_alpha_and_invert():
    grey = Image.new("L", (4, 4), 0)
    grey.putpixel((1, 1), 255)
    assert np.asarray(masks.mask_levels(grey))[1, 1] == 255
    assert np.asarray(masks.mask_levels(grey, invert=True))[1, 1] == 0
    # A stroke layer: transparent everywhere except one black-painted (opaque) pixel.
    layer = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    layer.putpixel((2, 3), (0, 0, 0, 255))
    levels = np.asarray(masks.mask_levels(layer))
    assert levels[3, 2] == 255 and levels.sum() == 255
    # An opaque RGBA mask is read by brightness like any other.
    opaque = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    assert np.asarray(masks.mask_levels(opaque)).min() == 255
    assert masks.mask_levels(Image.new("1", (4, 4), 1)).getextrema() == (255, 255)


def test_fit_mask_resizes_same_aspect_and_refuses_another():
    mask, warning = masks.fit_mask(Image.new("L", (32, 16)), (64, 32))
    assert mask.size == (64, 32) and "resized" in warning
    same, none = masks.fit_mask(Image.new("L", (64, 32)), (64, 32))
    assert none is None
    with pytest.raises(InputError, match="aspect ratios differ"):
        masks.fit_mask(Image.new("L", (32, 32)), (64, 32))


def test_all_black_mask_is_refused():
    with pytest.raises(InputError, match="all black: nothing to repaint"):
        masks.check_not_empty(Image.new("L", (8, 8), 0))
    masks.check_not_empty(Image.new("L", (8, 8), 1))


def test_feather_spreads_the_edge_and_paste_back_keeps_unmasked_pixels_exactly():
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    soft = masks.feather(mask, 3)
    levels = np.asarray(soft)
    assert 0 < levels[16, 7] < 255  # softened across the drawn edge
    assert masks.feather(mask, 0) is mask
    original, generated = gradient(32, 32), Image.new("RGB", (32, 32), (1, 2, 3))
    out = np.asarray(masks.paste_back(original, generated, soft))
    keep = levels == 0
    assert keep.any() and np.array_equal(out[keep], np.asarray(original)[keep])
    assert (out[levels == 255] == (1, 2, 3)).all()


# ---- canvas ----

def test_margins_are_checked_and_rounded_up_to_8():
    assert canvas.Margins.checked(left=1, top=17).rounded() == canvas.Margins(8, 0, 24, 0)
    with pytest.raises(InputError, match="--right -8 is negative"):
        canvas.Margins.checked(right=-8)
    with pytest.raises(InputError, match="nothing to extend"):
        canvas.Margins.checked()


def test_expand_canvas_keeps_the_original_and_fills_margins_with_edge_colours_and_noise():
    image = Image.new("RGB", (40, 24), (200, 40, 40))
    margins = canvas.Margins(16, 8, 0, 32)
    out = canvas.expand_canvas(image, margins, seed=3)
    assert out.size == (64, 56)
    px = np.asarray(out, dtype=np.float32)
    assert np.array_equal(px[0:24, 16:56], np.asarray(image))
    new = px[~canvas.old_region(out.size, margins)]
    assert abs(new[:, 0].mean() - 200) < 10 and abs(new[:, 1].mean() - 40) < 10  # the edge's colour
    assert new.std(axis=0).min() > 10  # not a flat fill
    assert np.array_equal(np.asarray(canvas.expand_canvas(image, margins, seed=3)), px)  # seeded


def test_outpaint_mask_covers_new_area_and_a_band_into_the_original():
    margins = canvas.Margins(left=16, bottom=8)
    mask = np.asarray(canvas.outpaint_mask((48, 40), margins, band=4))
    assert (mask[:, :20] == 255).all() and (mask[28:, :] == 255).all()
    assert (mask[:28, 20:] == 0).all()


def test_plan_steps_never_exceeds_the_step_and_sums_to_the_margin():
    passes = canvas.plan_steps(canvas.Margins(right=1536, top=264), 256)
    assert [s for s, _ in passes].count("right") == 6
    assert all(n <= 256 and n % 8 == 0 for _, n in passes)
    assert sum(n for s, n in passes if s == "top") == 264
    assert [n for s, n in passes if s == "top"] == [136, 128]


# ---- colour ----

def test_recolor_keeps_luma_and_takes_chroma():
    grey = gradient(64, 48).convert("L")
    colour = Image.new("RGB", (32, 24), (240, 220, 40))  # smaller: it is resized
    out = color.recolor(grey, colour)
    assert out.size == grey.size
    error = np.abs(color.luma(out) - np.asarray(grey, dtype=np.float64))
    assert error.mean() < 0.5 and error.max() <= 1.0
    cb, cr = color.chroma(out)
    mid = (np.asarray(grey) > 60) & (np.asarray(grey) < 200)
    assert (cb[mid] < -5).mean() > 0.9  # yellow: blue-difference negative where there is room


def test_recolor_scales_chroma_down_at_the_extremes_instead_of_clipping():
    white = Image.new("L", (4, 4), 255)
    out = color.recolor(white, Image.new("RGB", (4, 4), (255, 0, 0)))
    assert np.asarray(out).min() == 255  # pure white stays white: no room for colour


# ---- tiles ----

def test_tile_boxes_cover_the_picture_with_full_size_tiles():
    boxes = tiles.tile_boxes((200, 72), (64, 64), 16)
    assert all(b[2] - b[0] == 64 and b[3] - b[1] == 64 for b in boxes)
    covered = np.zeros((72, 200), bool)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] = True
    assert covered.all()
    assert tiles.tile_boxes((40, 30), (64, 64), 16) == [(0, 0, 40, 30)]


def test_process_tiles_identity_is_exact_and_constant_tiles_blend_smoothly():
    image = gradient(150, 110)
    out = tiles.process_tiles(image.copy(), (64, 64), 16, lambda tile, i: tile)
    assert np.array_equal(np.asarray(out), np.asarray(image))
    # Each tile a flat grey of its own index (20 levels apart, rows 60 apart): seams become ramps
    # across the 16+ shared pixels, never a jump much bigger than one ramp step.
    seen = []

    def flat(tile, index):
        seen.append(index)
        return Image.new("RGB", tile.size, (index * 20,) * 3)

    out = np.asarray(tiles.process_tiles(Image.new("RGB", (150, 110)), (64, 64), 16, flat), dtype=int)
    assert seen == list(range(len(seen))) and len(seen) == 6  # 3 columns x 2 rows
    assert np.abs(np.diff(out[..., 0], axis=1)).max() <= 2
    assert np.abs(np.diff(out[..., 0], axis=0)).max() <= 4


def test_back_projection_removes_an_invented_object_and_keeps_fine_detail():
    from PIL import ImageDraw

    source = Image.new("RGB", (32, 32), (30, 70, 220))
    enlarged = source.resize((128, 128), Image.Resampling.BICUBIC)
    # Detail finer than a source pixel (a 1 px checkerboard) and an invented 40 px yellow disc.
    fine = (np.indices((128, 128)).sum(0) % 2 * 40 - 20)[..., None]
    drawn = Image.fromarray(np.clip(np.asarray(enlarged, np.int16) + fine, 0, 255).astype(np.uint8))
    ImageDraw.Draw(drawn).ellipse([60, 60, 100, 100], fill=(240, 220, 40))
    out = np.asarray(resample.back_project(drawn, source), np.int16)
    # The disc is blue again inside; shrunk back, the picture is the source (a few levels off at its edge).
    assert np.abs(out[80, 76:84].mean(0) - (30, 70, 220)).max() < 12
    shrunk = np.asarray(Image.fromarray(out.astype(np.uint8)).resize((32, 32), Image.Resampling.BOX), np.int16)
    error = np.abs(shrunk - np.asarray(source, np.int16))
    assert error.mean() < 1 and error.max() <= 8
    # The checkerboard away from the disc survives (neighbouring pixels still differ by ~40).
    assert np.abs(np.diff(out[10, 10:40, 2])).mean() > 30


def test_back_projection_in_bands_equals_the_whole_picture_at_once():
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8))
    result = Image.fromarray(rng.integers(0, 256, (160, 96, 3), dtype=np.uint8))
    whole = resample.back_project(result, source, band=1000)
    banded = resample.back_project(result, source, band=8)
    assert np.array_equal(np.asarray(whole), np.asarray(banded))
    with pytest.raises(ValueError, match="not an integer enlargement"):
        resample.back_project(result.resize((150, 96)), source)
