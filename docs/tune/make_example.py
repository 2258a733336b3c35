"""Make the README's tuning walkthrough picture with the built-in demo model.

    python docs/tune/make_example.py      # a few minutes on a CPU; writes cross/ and before-after.png here

It runs the walkthrough's commands as a user would (`dream tune --preset demo`, then `dream gen` with
and without the LoRA, at seeds 100-107) and puts the results in one picture.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dreamcli.demo.world import draw_cross

HERE = Path(__file__).parent
WORK = HERE.parents[1] / "build" / "tune-example"  # git-ignored
SUBJECT_COLOR = "white"  # orange came out yellow: the demo model learnt the shape before the colour
BACKGROUNDS = ("black", "blue", "yellow", "purple", "green")


def dream(*args: str) -> list[Path]:
    """Run `dream ARGS` (this Python's dreamcli); prints its last note (speed, memory), returns its paths."""
    done = subprocess.run([sys.executable, "-m", "dreamcli", *args], check=True, capture_output=True, text=True)
    notes = [line for line in done.stderr.splitlines() if line.strip()]
    print(f"dream {args[0]}: {notes[-1] if notes else ''}")
    return [Path(line) for line in done.stdout.splitlines() if line.strip()]


def draw_subject(folder: Path) -> Path:
    """The walkthrough's subject pictures (also what tests/test_tune_meaning.py teaches)."""
    folder.mkdir(exist_ok=True)
    rng = random.Random(7)
    for i, background in enumerate(BACKGROUNDS):
        draw_cross(background, rng, SUBJECT_COLOR).save(folder / f"cross-{i}.png")
    return folder


def main() -> None:
    subject = draw_subject(HERE / "cross")
    shutil.rmtree(WORK, ignore_errors=True)
    lora = WORK / "lora"
    dream("tune", "--preset", "demo", "--images", str(subject), "--class", "shape", "--prompt", "a sks shape",
          "--class-prompt", "a shape", "-o", str(lora))
    rows = [("training pictures", sorted(subject.glob("*.png")))]
    for label, prompt, extra in (("'a sks shape' before", "a sks shape", ()),
                                 ("'a sks shape' after", "a sks shape", ("--lora", str(lora))),
                                 ("'a shape' after", "a shape", ("--lora", str(lora)))):
        out = WORK / label.replace("'", "").replace(" ", "-")
        rows.append((label, dream("gen", "--preset", "demo", prompt, "-n", "8", "-s", "100", "-o", str(out), *extra)))

    compose(rows).save(HERE / "before-after.png")
    print(HERE / "before-after.png")


def compose(rows: list[tuple[str, list[Path]]]) -> Image.Image:
    """One labelled row of pictures per (label, paths)."""
    cell, label_w, gap = 96, 150, 4
    sheet = Image.new("RGB", (label_w + 8 * (cell + gap), len(rows) * (cell + gap) + gap), (255, 255, 255))
    pen = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for r, (label, paths) in enumerate(rows):
        y = gap + r * (cell + gap)
        pen.text((6, y + cell // 2 - 8), label, fill=(0, 0, 0), font=font)
        for c, path in enumerate(paths):
            sheet.paste(Image.open(path).convert("RGB").resize((cell, cell)), (label_w + c * (cell + gap), y))
    return sheet

if __name__ == "__main__":
    main()
