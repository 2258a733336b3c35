"""Measure dream tune's speed and memory: steps/s, CPU seconds per step and peak RSS, one JSON line per setting.

Run: python benchmarks/tune_speed.py [MODEL] [--steps 40] [--resolution N] [--device cpu] [--shape NAME]
    [--setting "FLAGS" ...]
MODEL defaults to the built-in demo model; with none built, a demo-shaped model with random weights
(same UNet, VAE and text encoder sizes, so the same speed) is made in a temporary folder. --shape sd15 (or
another of dreamcli.bench.shapes) trains a full-size shape with random weights instead, saved in bf16.
Each --setting is one run's extra flags (default: none, --gradient-checkpointing, --no-prior).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_shaped_model(folder: Path) -> Path:
    """The demo model's architecture with random weights."""
    from diffusers import AutoencoderKL

    from dreamcli.demo.tokenizer import load_tokenizer, write_tokenizer
    from dreamcli.demo.train import RESOLUTION, VAE_CHANNELS, build_models, make_pipeline

    write_tokenizer(folder / "tokenizer-files")
    tokenizer = load_tokenizer(folder / "tokenizer-files")
    n = len(VAE_CHANNELS)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=VAE_CHANNELS, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=RESOLUTION,
    )
    text_encoder, unet = build_models(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    make_pipeline(vae, text_encoder, unet, tokenizer).save_pretrained(folder / "model")
    return folder / "model"


def subject(folder: Path, size: int, shape: str = "square") -> Path:
    """Five pictures of a red `shape` to learn from."""
    from dreamcli.demo.world import Scene, draw

    folder.mkdir(parents=True, exist_ok=True)
    for i, (position, background) in enumerate(
        [("left", "white"), ("right", "black"), ("center", "blue"), ("top", "green"), ("bottom", "yellow")]
    ):
        draw(Scene(shape, "red", background, position, "large"), size, random.Random(i)).save(folder / f"{i}.png")
    return folder


def one_run(model: Path, images: Path, outdir: Path, steps: int, extra: list[str]) -> dict:
    """A fresh `dream tune` process (so peak RSS is its own), timed from the loss log."""
    command = [
        sys.executable, "-m", "dreamcli", "tune", "-m", str(model), "--images", str(images), "--class", "shape",
        "-o", str(outdir), "--steps", str(steps), "--class-images", "8", "--validation-images", "0",
        "--checkpoint-every", str(steps), "--json", "-q", *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    log = [json.loads(line) for line in (outdir / "loss_log.jsonl").read_text().splitlines()]
    # Steady state: skip the first steps (allocator warm-up) when timing.
    warm = log[len(log) // 4]
    rate = (log[-1]["step"] - warm["step"]) / max(log[-1]["seconds"] - warm["seconds"], 1e-9)
    return {"steps_per_second": round(rate, 3), "peak_rss_mb": round(result["peak_rss_mb"]), "flags": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--shape", help="a full-size shape with random weights (dreamcli.bench.shapes)")
    parser.add_argument("--setting", action="append", help="one run's extra flags, quoted")
    args = parser.parse_args()
    settings = [s.split() for s in args.setting] if args.setting else [[], ["--gradient-checkpointing"], ["--no-prior"]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.shape:
            from dreamcli.bench.shapes import saved_shape

            model = saved_shape(args.shape, tmp, "bf16")
        else:
            model = Path(args.model) if args.model else ROOT / "src" / "dreamcli" / "demo" / "model"
            if not (model / "model_index.json").is_file():
                model = demo_shaped_model(tmp / "demo-shaped")
        images = subject(tmp / "subject", args.resolution)
        for i, extra in enumerate(settings):
            extra = ["--device", args.device, "--resolution", str(args.resolution), *extra]
            figures = one_run(model, images, tmp / f"run{i}", args.steps, extra)
            print(json.dumps({"model": str(model), **figures}), flush=True)


if __name__ == "__main__":
    main()
