"""Meaning: the demo model learns a subject it has never seen (a white cross) as `sks shape`, and keeps
its class prior with prior preservation; measured on pixels, as the DreamBooth paper measures drift."""

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
DEMO_FOLDERS = (ROOT / "src" / "dreamcli" / "demo" / "model", ROOT / "build" / "demo-model")
# The README walkthrough's subject (drawn by docs/tune/make_example.py): a white cross, a shape the world never
# had. A palette colour, as the demo VAE decodes only the world's colours; an orange cross was learnt as a
# yellow one (the shape came before the colour), white stays white.
SUBJECT = ROOT / "docs" / "tune" / "cross"
SUBJECT_COLOR = "white"
INSTANCE_PROMPT, CLASS_PROMPT = "a sks shape", "a shape"
EVAL_SEEDS = range(100, 116)
# The demo preset: its sampling settings, and its [tune] table (layers = "all": a cross is a shape the model
# never drew, which attention-only adapters did not teach it in 300-600 steps).
DEMO = load_preset("demo")


def demo_model() -> Path:
    for folder in DEMO_FOLDERS:
        if (folder / "model_index.json").is_file():
            return folder
    pytest.skip("the built-in demo model is not built yet (python -m dreamcli.demo.train); "
                f"looked in {', '.join(str(f) for f in DEMO_FOLDERS)}")


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


def pictures(model: Path, lora: Path | None, prompt: str) -> list[Image.Image]:
    """`prompt` at the demo preset's guidance (the one its quality bar was measured at), fixed seeds."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    generators = [torch.Generator().manual_seed(s) for s in EVAL_SEEDS]
    return pipe([prompt] * len(generators), num_inference_steps=DEMO["steps"], guidance_scale=DEMO["guidance"],
                generator=generators).images


def contact_sheet(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of pictures side by side in one image."""
    sheet = Image.new("RGB", (128 * max(len(r) for r in rows), 128 * len(rows)))
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(image.resize((128, 128)), (128 * x, 128 * y))
    return sheet


def teach(tmp_path: Path, steps: int, prior: bool, **overrides) -> dict:
    """Tune the demo model on the cross with the demo preset's [tune] settings, and measure: the subject
    rate of `a sks shape`, and what `a shape` gives."""
    from dreamcli.requests import TuneConfig
    from dreamcli.training import tune

    model, settings = demo_model(), DEMO["tune"]
    config = TuneConfig(
        instance_data_dir=str(SUBJECT), class_word="shape", model=str(model),
        output_dir=str(tmp_path / ("prior" if prior else "no-prior")), instance_prompt=INSTANCE_PROMPT,
        class_prompt=CLASS_PROMPT, max_train_steps=steps, learning_rate=settings["lr"], rank=settings["rank"],
        lora_layers=settings["layers"], train_text_encoder=settings["train_text_encoder"],
        train_batch_size=settings["batch_size"], with_prior_preservation=prior,
        num_class_images=settings["class_images"], class_steps=DEMO["steps"], class_guidance=DEMO["guidance"],
        checkpointing_steps=steps,
        num_validation_images=0, device="cpu", seed=0,
    )
    result = tune(replace(config, **overrides))
    tuned = pictures(model, result.outdir, INSTANCE_PROMPT)
    classes = pictures(model, result.outdir, CLASS_PROMPT)
    contact_sheet([tuned, classes]).save(tmp_path / f"{Path(config.output_dir).name}.png")  # to look at
    return {
        "steps": steps, "prior": prior, "steps_per_second": round(result.steps_per_second, 2),
        "peak_rss_mb": round(result.peak_rss_mb), "subject_rate": np.mean([shows_subject(i) for i in tuned]),
        "class_ordinary_rate": np.mean([ordinary_shape(i) for i in classes]),
        "class_drift_rate": np.mean([shows_subject(i) for i in classes]),
    }


def test_demo_model_learns_a_new_subject_and_keeps_its_prior(tmp_path):
    model = demo_model()
    before = pictures(model, None, INSTANCE_PROMPT)
    assert np.mean([shows_subject(i) for i in before]) <= 0.125, "the untuned model must not know the subject"
    base_classes = np.mean([ordinary_shape(i) for i in pictures(model, None, CLASS_PROMPT)])
    measured = teach(tmp_path, steps=DEMO["tune"]["steps"], prior=True)
    print(json.dumps({**measured, "base_class_ordinary_rate": base_classes}, default=float))
    assert measured["subject_rate"] >= 0.75, measured
    # Prior preservation: the class prompt still gives the world's ordinary shapes.
    assert measured["class_ordinary_rate"] >= min(0.75, base_classes - 0.125), measured


@pytest.mark.slow
def test_benchmark_language_drift_with_and_without_prior(tmp_path):
    """Reports the class prompt's drift towards the subject with and without the prior loss (two runs).

    Measured 2026-11-21: with the prior, subject 14/16 and drift 0/16; without, subject 15/16 and drift 15/16.
    """
    with_prior = teach(tmp_path, steps=DEMO["tune"]["steps"], prior=True)
    without = teach(tmp_path, steps=DEMO["tune"]["steps"], prior=False)
    print(json.dumps({"with_prior": with_prior, "without_prior": without}, default=float))
    assert with_prior["subject_rate"] >= 0.75 and without["subject_rate"] >= 0.75
    # Language drift: without the prior loss, "a shape" turns into the subject; with it, it does not.
    assert without["class_drift_rate"] - with_prior["class_drift_rate"] >= 0.5
