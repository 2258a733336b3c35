"""Measure how well a model follows shape-world prompts, by reading its pictures back with the pixel reader.

Run: python -m dreamcli.demo.evaluate [MODEL_DIR] [--prompts 240] [--guidance 7.5 1.0]
     python -m dreamcli.demo.evaluate src/dreamcli/demo/model-dit --guidance 4.0
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from .world import PHRASES, Scene, article, random_scene, read


def eval_prompts(count: int, seed: int = 1234) -> list[tuple[str, Scene, bool]]:
    """Fixed evaluation prompts: (prompt, scene asked for, whether the position is asked)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng)
        ask_size, ask_pos = rng.random() < 0.5, rng.random() < 0.7
        words = ([scene.size] if ask_size else []) + [scene.color, scene.shape]
        words += [PHRASES[scene.position]] if ask_pos else []
        words += ["on", article(scene.background), scene.background, "background"]
        prompt = " ".join([article(words[0])] + words)
        out.append((prompt, scene, ask_pos))
    return out


def score(images, cases) -> dict[str, float]:
    """Fractions of pictures whose read-back colour, background, position (when asked) and shape match."""
    hits = {"color": 0, "background": 0, "shape": 0, "position": 0}
    asked_pos = 0
    for image, (_, scene, ask_pos) in zip(images, cases, strict=True):
        r = read(image)
        hits["color"] += r.color == scene.color
        hits["background"] += r.background == scene.background
        hits["shape"] += r.shape == scene.shape
        if ask_pos:
            asked_pos += 1
            hits["position"] += r.position == scene.position
    n = len(cases)
    return {
        "color": hits["color"] / n,
        "background": hits["background"] / n,
        "shape": hits["shape"] / n,
        "position": hits["position"] / max(asked_pos, 1),
    }


def generate_images(pipe, prompts: list[str], guidance: float, steps: int, seed: int, batch: int = 16,
                    rescale: float = 0.0):
    """Images for prompts with per-prompt seeds (seed + index) drawn on CPU generators; `rescale` is
    diffusers' guidance_rescale (Lin et al.: keeps strong guidance from over-saturating colours)."""
    import torch

    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        gens = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, **extras(pipe, rescale))
        images.extend(out.images)
    return images


def load_pipeline(folder):
    """A demo model's diffusers pipeline: the UNet demo has no safety checker, demo-dit no T5 (diffusers' way to
    run SD3 without it is to pass None for it)."""
    from diffusers import DiffusionPipeline

    index = json.loads((Path(folder) / "model_index.json").read_text())
    absent = dict(safety_checker=None, requires_safety_checker=False) if "safety_checker" in index else \
        dict(text_encoder_3=None, tokenizer_3=None)
    pipe = DiffusionPipeline.from_pretrained(folder, **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def extras(pipe, rescale: float) -> dict:
    """Pipeline arguments beyond the common ones, as dream gen passes them: what the model's family adds (demo-dit's
    32 zero T5 tokens, which it was trained with), and the guidance rescale where the pipeline has one."""
    import inspect

    from dreamcli import families

    out = families.for_pipeline(pipe).call_args(pipe, {})
    if "guidance_rescale" in inspect.signature(pipe.__call__).parameters:
        out["guidance_rescale"] = rescale
    elif rescale:
        raise SystemExit(f"--rescale: {type(pipe).__name__} has no guidance rescale; leave it out")
    return out


def evaluate(pipe, count: int = 240, guidance: float = 7.5, steps: int = 20, seed: int = 0) -> dict[str, float]:
    """Score a pipeline on the first `count` fixed evaluation prompts."""
    cases = eval_prompts(count)
    images = generate_images(pipe, [p for p, _, _ in cases], guidance, steps, seed)
    return score(images, cases)


def save_grid(images, prompts: list[str], path: str, columns: int = 6) -> None:
    """Save pictures in a grid with each prompt written under its picture."""
    from PIL import Image, ImageDraw, ImageFont

    side = images[0].width
    cell_h = side + 34
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * side, rows * cell_h), "white")
    pen = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=10)
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=False)):
        x, y = (i % columns) * side, (i // columns) * cell_h
        grid.paste(image, (x, y))
        # Wrap the prompt over up to three short lines under the picture.
        words, lines = prompt.split(), [""]
        for word in words:
            if len(lines[-1]) + len(word) > 24:
                lines.append("")
            lines[-1] = (lines[-1] + " " + word).strip()
        pen.multiline_text((x + 2, y + side + 1), "\n".join(lines[:3]), fill="black", font=font, spacing=1)
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: print the metrics as JSON, one object per guidance value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(Path(__file__).parent / "model"),
                        help="a diffusers folder: the demo model (default), or src/dreamcli/demo/model-dit")
    parser.add_argument("--prompts", type=int, default=240)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--rescale", type=float, default=0.0,
                        help="guidance rescale, 0 to 1 (what dream gen --guidance-rescale sets)")
    parser.add_argument("--grid", help="also save a grid of the first 24 pictures (first guidance) here")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model)
    cases = eval_prompts(args.prompts)
    prompts = [p for p, _, _ in cases]
    for g in args.guidance:
        start = time.time()
        images = generate_images(pipe, prompts, g, args.steps, seed=0, rescale=args.rescale)
        metrics = score(images, cases)
        seconds = round(time.time() - start, 1)
        settings = {"guidance": g, "rescale": args.rescale, "prompts": args.prompts, "steps": args.steps}
        print(json.dumps({**settings, **metrics, "seconds": seconds, "s_per_image": round(seconds / len(prompts), 3)}))
        if args.grid and g == args.guidance[0]:
            save_grid(images[:24], prompts[:24], args.grid)


if __name__ == "__main__":
    main()
