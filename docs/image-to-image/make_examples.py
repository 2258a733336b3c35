"""Make the README's image-to-image example pictures with the built-in demo model.

    python docs/image-to-image/make_examples.py      # writes the PNGs next to this file

Each example is the library call the README shows, on a picture from the demo's shapes world, at
a fixed seed; the strip `examples.png` puts every input beside its output.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from dreamcli.demo.world import COLORS, Scene, draw
from dreamcli.requests import ColorizeRequest, InpaintRequest, ModelOptions, OutpaintRequest, UpscaleRequest
from dreamcli.tasks import colorize, inpaint, outpaint, upscale

HERE = Path(__file__).parent
MODEL = ModelOptions("package:demo/model", device="cpu")
GUIDANCE = 2.0  # the demo preset's


def examples() -> list[tuple[str, Image.Image, Image.Image]]:
    """(label, input, output) for each command."""
    blue = Image.new("RGB", (128, 128), COLORS["blue"])
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (36, 36, 92, 92))
    shown_mask = blue.copy()
    ImageDraw.Draw(shown_mask).rectangle((36, 36, 91, 91), outline=(255, 255, 255), width=2)
    painted = inpaint(InpaintRequest(blue, mask, "a large red circle in the center on a blue background", MODEL,
                                     num_inference_steps=20, guidance_scale=GUIDANCE, seed=0))[0].image

    scene = draw(Scene("triangle", "yellow", "green", "center", "small"))
    wider = outpaint(OutpaintRequest(scene, "a yellow triangle on a green background", MODEL, left=64, right=64,
                                     num_inference_steps=20, guidance_scale=GUIDANCE, seed=0))[0].image

    grey = draw(Scene("square", "yellow", "purple", "center", "large")).convert("L").convert("RGB")
    coloured = colorize(ColorizeRequest(grey, MODEL, "a yellow square on a purple background", color_prompt="",
                                        num_inference_steps=20, guidance_scale=GUIDANCE, seed=0))[0].image

    small = draw(Scene("circle", "orange", "white", "left", "large"), size=64)
    bigger = upscale(UpscaleRequest(small, MODEL, "an orange circle on a white background", scale=4,
                                    num_inference_steps=20, guidance_scale=GUIDANCE, seed=0))[0].image
    return [("inpaint", shown_mask, painted), ("outpaint", scene, wider), ("colorize", grey, coloured),
            ("upscale", small, bigger)]


def main() -> None:
    rows = examples()
    height = 128

    def fit(image: Image.Image) -> Image.Image:
        return image.resize((image.width * height // image.height, height))

    scaled = [(fit(a), fit(b)) for _, a, b in rows]
    width = max(a.width + b.width for a, b in scaled) + 3 * 8
    strip = Image.new("RGB", (width, len(scaled) * (height + 8) + 8), (255, 255, 255))
    for i, (a, b) in enumerate(scaled):
        y = 8 + i * (height + 8)
        strip.paste(a, (8, y))
        strip.paste(b, (16 + a.width, y))
    for label, a, b in rows:
        a.save(HERE / f"{label}-in.png", optimize=True)
        b.save(HERE / f"{label}-out.png", optimize=True)
    strip.save(HERE / "examples.png", optimize=True)
    print(HERE / "examples.png")


if __name__ == "__main__":
    main()
