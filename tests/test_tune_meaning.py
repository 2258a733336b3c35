"""Meaning: the demo models (the UNet one, and demo-dit through SD3's flow-matching recipe) learn a subject they
have never seen (a white cross) as `sks shape`, and keep their class prior with prior preservation; measured on
pixels, as the DreamBooth paper measures drift."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcli.config import load_preset
from dreamcli.demo.world import COLORS, read

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"demo": ROOT / "src/dreamcli/demo/model", "demo-dit": ROOT / "src/dreamcli/demo/model-dit"}
# Subject rates the tests ask for, with the prior. demo-dit learns the cross less surely: 7/16 when shipped (13/16
# without the prior, whose class pictures then turn into crosses); its run takes minutes, so it is marked slow.
SUBJECT_BAR = {"demo": 0.75, "demo-dit": 0.3}
# The README walkthrough's subject (drawn by docs/tune/make_example.py): a white cross, a shape the world never
# had. A palette colour, as the demo VAE decodes only the world's colours; an orange cross was learnt as a
# yellow one (the shape came before the colour), white stays white.
SUBJECT = ROOT / "docs" / "tune" / "cross"
SUBJECT_COLOR = "white"
INSTANCE_PROMPT, CLASS_PROMPT = "a sks shape", "a shape"
EVAL_SEEDS = range(100, 116)


def demo_model(preset: str) -> Path:
    folder = FOLDERS[preset]
    if not (folder / "model_index.json").is_file():
        pytest.skip(f"the built-in model of preset {preset} is not built (python -m dreamcli.demo.train): {folder}")
    return folder


def nearest_palette(image: Image.Image) -> np.ndarray:
    """Each pixel's nearest palette colour, as an index into COLORS."""
    px = np.asarray(image.convert("RGB"), dtype=np.float64)
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    return np.argmin(((px[:, :, None, :] - palette[None, None]) ** 2).sum(-1), axis=-1)


def subject_mask(image: Image.Image) -> np.ndarray:
    """Pixels whose nearest palette colour is the subject's."""
    return nearest_palette(image) == list(COLORS).index(SUBJECT_COLOR)


def is_cross(mask: np.ndarray) -> bool:
    """>= 3% of the picture, and a bounding box with its centre and arm tips filled and its corners empty.

    Circles fill the corner probes at (0.22, 0.22) of their box, squares fill everything and
    triangles fill the bottom corners, so none of the world's shapes passes.
    """
    if mask.mean() < 0.03:
        return False
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()

    def filled(fx: float, fy: float) -> bool:
        y, x = int(y0 + fy * (y1 - y0)), int(x0 + fx * (x1 - x0))
        return mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].mean() > 0.5

    arms = sum(filled(fx, fy) for fx, fy in ((0.5, 0.12), (0.5, 0.88), (0.12, 0.5), (0.88, 0.5)))
    corners = sum(filled(fx, fy) for fx, fy in ((0.22, 0.22), (0.78, 0.22), (0.22, 0.78), (0.78, 0.78)))
    return filled(0.5, 0.5) and arms >= 3 and corners <= 1


def shows_subject(image: Image.Image) -> bool:
    """The subject: a cross in the subject's colour."""
    return is_cross(subject_mask(image))


def ordinary_shape(image: Image.Image) -> bool:
    """A picture the untuned world makes: a palette-coloured shape the pixel reader finds, and no cross."""
    return read(image).shape is not None and not shows_subject(image)


def pictures(preset: str, lora: Path | None, prompt: str) -> list[Image.Image]:
    """`prompt` at the preset's guidance (the one its quality bar was measured at), fixed seeds, through diffusers."""
    import torch

    from dreamcli.demo.evaluate import extras, load_pipeline

    settings, pipe = load_preset(preset), load_pipeline(demo_model(preset))
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    generators = [torch.Generator().manual_seed(s) for s in EVAL_SEEDS]
    return pipe([prompt] * len(generators), num_inference_steps=settings["steps"],
                guidance_scale=settings["guidance"], generator=generators, **extras(pipe, 0.0)).images


def contact_sheet(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of pictures side by side in one image."""
    sheet = Image.new("RGB", (128 * max(len(r) for r in rows), 128 * len(rows)))
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(image.resize((128, 128)), (128 * x, 128 * y))
    return sheet


def teach(tmp_path: Path, preset: str, prior: bool, **overrides) -> dict:
    """Tune a demo model on the cross with its preset's [tune] settings (the UNet demo's: layers = "all", as a
    cross is a shape it never drew, which attention-only adapters did not teach it in 300-600 steps), and
    measure: the subject rate of `a sks shape`, and what `a shape` gives."""
    from dreamcli.requests import TuneConfig
    from dreamcli.training import tune

    model, sampling = demo_model(preset), load_preset(preset)
    settings, steps = sampling["tune"], sampling["tune"]["steps"]
    config = TuneConfig(
        instance_data_dir=str(SUBJECT), class_word="shape", model=str(model),
        output_dir=str(tmp_path / ("prior" if prior else "no-prior")), instance_prompt=INSTANCE_PROMPT,
        class_prompt=CLASS_PROMPT, max_train_steps=steps, learning_rate=settings["lr"], rank=settings["rank"],
        lora_layers=settings["layers"], train_text_encoder=settings["train_text_encoder"],
        train_batch_size=settings["batch_size"], with_prior_preservation=prior,
        num_class_images=settings["class_images"], class_steps=sampling["steps"],
        class_guidance=sampling["guidance"],
        checkpointing_steps=steps,
        num_validation_images=0, device="cpu", seed=0,
    )
    result = tune(replace(config, **overrides))
    tuned = pictures(preset, result.outdir, INSTANCE_PROMPT)
    classes = pictures(preset, result.outdir, CLASS_PROMPT)
    contact_sheet([tuned, classes]).save(tmp_path / f"{Path(config.output_dir).name}.png")  # to look at
    return {
        "steps": steps, "prior": prior, "steps_per_second": round(result.steps_per_second, 2),
        "peak_rss_mb": round(result.peak_rss_mb), "subject_rate": np.mean([shows_subject(i) for i in tuned]),
        "class_ordinary_rate": np.mean([ordinary_shape(i) for i in classes]),
        "class_drift_rate": np.mean([shows_subject(i) for i in classes]),
    }


@pytest.mark.parametrize("preset", ["demo", pytest.param("demo-dit", marks=pytest.mark.slow)])
def test_demo_model_learns_a_new_subject_and_keeps_its_prior(tmp_path, preset):
    before = pictures(preset, None, INSTANCE_PROMPT)
    assert np.mean([shows_subject(i) for i in before]) <= 0.125, "the untuned model must not know the subject"
    base_classes = np.mean([ordinary_shape(i) for i in pictures(preset, None, CLASS_PROMPT)])
    measured = teach(tmp_path, preset, prior=True)
    print(json.dumps({**measured, "base_class_ordinary_rate": base_classes}, default=float))
    assert measured["subject_rate"] >= SUBJECT_BAR[preset], measured
    # Prior preservation: the class prompt still gives the world's ordinary shapes.
    assert measured["class_ordinary_rate"] >= min(0.75, base_classes - 0.125), measured


@pytest.mark.slow
def test_benchmark_language_drift_with_and_without_prior(tmp_path):
    """Reports the class prompt's drift towards the subject with and without the prior loss (two runs).

    Measured 2026-11-21 on demo: with the prior, subject 14/16 and drift 0/16; without, subject 15/16 and drift
    15/16. demo-dit's figures are in its model card: its drifted crosses come out yellow, which this white-cross
    count misses, so it is not asserted here.
    """
    with_prior = teach(tmp_path, "demo", prior=True)
    without = teach(tmp_path, "demo", prior=False)
    print(json.dumps({"with_prior": with_prior, "without_prior": without}, default=float))
    assert with_prior["subject_rate"] >= 0.75 and without["subject_rate"] >= 0.75
    # Language drift: without the prior loss, "a shape" turns into the subject; with it, it does not.
    assert without["class_drift_rate"] - with_prior["class_drift_rate"] >= 0.5


@pytest.mark.slow
def test_fp8_base_still_learns_the_subject(tmp_path):
    """--quantize fp8 (the frozen weights' linear layers in fp8, the adapters fp32) on the demo model: the cross is
    learnt and the prior kept as with bf16 weights."""
    base_classes = np.mean([ordinary_shape(i) for i in pictures("demo", None, CLASS_PROMPT)])
    measured = teach(tmp_path, "demo", prior=True, quantize="fp8", mixed_precision="bf16")
    print(json.dumps({**measured, "base_class_ordinary_rate": base_classes}, default=float))
    # Measured 2026-11-30: subject 16/16, class ordinary 12/16, drift 0/16, 3.0 steps/s on 2 CPU cores.
    assert measured["subject_rate"] >= SUBJECT_BAR["demo"], measured
    assert measured["class_ordinary_rate"] >= min(0.75, base_classes - 0.125), measured
