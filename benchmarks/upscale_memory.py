"""Peak memory of the tiled upscaler for two output sizes: it should follow the tile, not the picture.

Each size runs in a fresh process: load the model, upscale a small picture once (so the model and
one tile's pass have reached their peak), then upscale the big one and report how much the peak
resident memory grew. The pictures themselves (input, canvas, one strip) are listed for comparison:
they are all the growth the tiled path should show.

    python benchmarks/upscale_memory.py                 # demo model if built, else a tiny random one
    python benchmarks/upscale_memory.py -m MODEL --sizes 1024 4096 --tile 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str, size: int, tile: int, steps: int) -> dict:
    """In this process: warm up on a one-tile picture, then upscale to size x size; peak growth in MiB."""
    from PIL import Image

    from dreamcli.requests import ModelOptions, UpscaleRequest
    from dreamcli.tasks import upscale

    def run(side: int) -> float:
        picture = Image.effect_mandelbrot((side // 4, side // 4), (-2, -1.5, 1, 1.5), 60).convert("RGB")
        request = UpscaleRequest(picture, ModelOptions(model, device="cpu"), scale=4, tile=tile,
                                 num_inference_steps=steps, strength=0.5, seed=0, max_pixels=size * size)
        started = time.perf_counter()
        (result,) = upscale(request)
        assert result.image.size == (side, side)
        return time.perf_counter() - started

    run(tile)  # one tile: model loaded, one pass at its peak
    before = peak_mib()
    seconds = run(size)
    after = peak_mib()
    # Tiled canvas, its RGB copy and the back-projected result (uint8 RGB), the input, one strip.
    pictures = (size * size * 3 * 3 + (size // 4) ** 2 * 3 + size * tile * 3 * 2) / 2**20
    return {"size": size, "tile": tile, "peak_before_mib": round(before, 1), "peak_after_mib": round(after, 1),
            "growth_mib": round(after - before, 1), "picture_buffers_mib": round(pictures, 1),
            "seconds": round(seconds, 1)}


def tiny_model(folder: Path) -> str:
    """A tiny random SD1 pipeline from the test suite's configs (memory behaviour only, no meaning)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models as tm

    pipe = tm.build_sd1(tm.write_tokenizer(folder / "tokenizer"))
    pipe.save_pretrained(folder / "sd1")
    return str(folder / "sd1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="model reference (default: the demo model, else a tiny one)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[1024, 4096], help="two output sides in pixels")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps before strength 0.5 (1 denoising step)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.tile, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            demo = ROOT / "src" / "dreamcli" / "demo" / "model"
            model = str(demo) if (demo / "model_index.json").is_file() else tiny_model(Path(tmp))
        rows = []
        for size in args.sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(size), "-m", model, "--tile", str(args.tile),
                 "--steps", str(args.steps)],
                capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    small, big = rows
    print(f"model {Path(model).name}, tile {args.tile}: output {small['size']}^2 grew the peak by "
          f"{small['growth_mib']} MiB, {big['size']}^2 by {big['growth_mib']} MiB "
          f"(the pictures themselves: {small['picture_buffers_mib']} and {big['picture_buffers_mib']} MiB)")


if __name__ == "__main__":
    main()
