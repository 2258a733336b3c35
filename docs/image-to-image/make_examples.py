"""Make the README's image-to-image example pictures with the built-in demo model.

    python docs/image-to-image/make_examples.py      # from the repository root; about 5 minutes on 2 cores

It draws the input pictures the README's commands name (photo.png, mask.png, old-photo.jpg, blocky.jpg,
from the demo's shapes world), runs those commands as typed plus `-s 0`, and puts every input beside its
output in `examples.png` (for the hires fix: the same `dream gen` without --hires beside it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from dreamcli.demo.world import Scene, draw

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FOLDER = HERE.relative_to(ROOT).as_posix()  # docs/image-to-image, as the README's commands name it
MASK_BOX = (36, 36, 92, 92)  # around the photo's triangle
ZOOM = {"restore": (0, 32, 64, 96)}  # rows shown as a crop at 2x, nearest pixels: JPEG blocks are that small

# (label, the README's command after `dream`, the input shown in the figure)
COMMANDS = [
    ("inpaint", ["inpaint", f"{FOLDER}/photo.png", "--mask", f"{FOLDER}/mask.png",
                 "a red circle in the center"], "photo.png"),
    ("outpaint", ["outpaint", f"{FOLDER}/photo.png", "--left", "64", "--right", "64",
                  "a yellow triangle on a green background"], "photo.png"),
    ("colorize", ["colorize", f"{FOLDER}/old-photo.jpg", "a yellow square on a purple background"], "old-photo.jpg"),
    ("upscale", ["upscale", f"{FOLDER}/photo.png", "--scale", "4"], "photo.png"),
    ("img2img", ["img2img", f"{FOLDER}/photo.png", "a red triangle on a blue background", "--strength", "0.6"],
     "photo.png"),
    ("restore", ["restore", f"{FOLDER}/blocky.jpg"], "blocky.jpg"),
    ("hires", ["gen", "a red circle on a blue background", "--hires", "2"], None),
]


def make_inputs() -> None:
    """The pictures the README's commands read."""
    draw(Scene("triangle", "yellow", "green", "center", "small")).save(HERE / "photo.png", optimize=True)
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle(MASK_BOX, fill=255)  # white: repaint
    mask.save(HERE / "mask.png", optimize=True)
    old = draw(Scene("square", "yellow", "purple", "center", "large")).convert("L")
    old.save(HERE / "old-photo.jpg", quality=90)
    blocky = draw(Scene("circle", "red", "white", "left", "large"))
    blocky.save(HERE / "blocky.jpg", quality=8)  # heavy JPEG artefacts for restore


def shown_with_mask(photo: Image.Image) -> Image.Image:
    """The inpaint input with the mask's outline drawn on it, for the figure."""
    shown = photo.convert("RGB")
    ImageDraw.Draw(shown).rectangle(MASK_BOX, outline=(255, 255, 255), width=2)
    return shown


def run(args: list[str], outdir: Path) -> Image.Image:
    """`dream ARGS -s 0` from the repository root; the picture it wrote."""
    cmd = [sys.executable, "-m", "dreamcli", *args, "-s", "0", "-o", str(outdir), "--json", "-q"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"dream {' '.join(args)} failed:\n{done.stderr}")
    return Image.open(json.loads(done.stdout.splitlines()[0])["path"]).convert("RGB")


def main() -> None:
    make_inputs()
    rows = []
    with tempfile.TemporaryDirectory() as outdir:
        for label, args, source in COMMANDS:
            if source is None:  # gen --hires: beside the same command without it
                before = run([a for a in args if a not in ("--hires", "2")], Path(outdir))
            else:
                before = Image.open(HERE / source).convert("RGB")
            if label == "inpaint":
                before = shown_with_mask(before)
            rows.append((label, before, run(args, Path(outdir))))
    height = 128

    def fit(image: Image.Image) -> Image.Image:
        return image.resize((image.width * height // image.height, height), Image.Resampling.LANCZOS)

    def zoom(label: str, image: Image.Image) -> Image.Image:
        box = ZOOM.get(label)
        return image if box is None else image.crop(box).resize((128, 128), Image.Resampling.NEAREST)

    scaled = [(fit(zoom(label, a)), fit(zoom(label, b))) for label, a, b in rows]
    width = max(a.width + b.width for a, b in scaled) + 3 * 8
    strip = Image.new("RGB", (width, len(scaled) * (height + 8) + 8), (255, 255, 255))
    for i, (a, b) in enumerate(scaled):
        y = 8 + i * (height + 8)
        strip.paste(a, (8, y))
        strip.paste(b, (16 + a.width, y))
    for label, _, b in rows:
        b.save(HERE / f"{label}-out.png", optimize=True)
    strip.save(HERE / "examples.png", optimize=True)
    print(HERE / "examples.png")


if __name__ == "__main__":
    main()
