"""Pictures for watching a training run, drawn with Pillow: the loss curve and the validation grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

WHITE, INK, FAINT, GRID = (255, 255, 255), (30, 30, 30), (110, 110, 110), (228, 228, 228)
# (raw steps, smoothed line) per series: a light and a dark shade of one hue.
SERIES = {
    "instance_loss": ("instance loss", (170, 198, 232), (31, 100, 180)),
    "prior_loss": ("prior (class) loss", (250, 196, 150), (220, 100, 10)),
}
GRID_META_KEY = "dreamcli-validation"  # PNG text chunk of a validation grid: step, prompt and seed per cell


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` px (a fixed small bitmap font where Pillow lacks FreeType)."""
    return ImageFont.load_default(size=size)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: each point is the mean of itself and up to window-1 points before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(count: int) -> int:
    """About 5% of the run, between 5 and 200 steps: flat enough to read a trend, short enough to follow it."""
    return max(5, min(200, count // 20))


def nice_ticks(low: float, high: float, count: int = 6, whole: bool = False, cover: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart, whole numbers if `whole`) within [low, high],
    or (`cover`) with the last one at or above `high`."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1) if whole else step
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9 or (cover and ticks[-1] < high):
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


def loss_chart(records: list[dict], width: int = 1000, height: int = 500, title: str = "") -> Image.Image:
    """The loss log drawn as a chart: instance and prior loss per step (light) with a smoothed line
    (dark) each, axes labelled. The prior series is left out when it is all zero (no prior preservation).
    Spikes far above the smoothed lines are cut at the top, so that they do not flatten the rest."""
    image = Image.new("RGB", (width, height), WHITE)
    pen = ImageDraw.Draw(image)
    small, normal = font(13), font(16)
    left, right, top, bottom = 78, 24, 48, 58
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area; y grows downwards

    steps = [r["step"] for r in records]
    series = {}
    for key in SERIES:
        values = [float(r.get(key, 0.0) or 0.0) for r in records]
        if values and any(v != 0.0 for v in values):
            series[key] = (values, smooth(values, smoothing_window(len(values))))
    head = title or "training loss"
    if steps:
        head += f"  ·  step {steps[-1]}"
    pen.text((x0, 14), head, fill=INK, font=normal)

    first, last = (min(steps), max(steps)) if steps else (0, 1)
    first = 0 if first <= 1 else first  # a run from the start reads from step 0
    last = max(last, first + 1)
    # Single steps' losses are heavy-tailed (a timestep near pure noise): the axis follows the smoothed
    # lines and most steps, and the rarer spikes are cut at the top.
    everything = sorted(v for raw, _ in series.values() for v in raw)
    if everything:
        top_value = max(everything[int(0.9 * (len(everything) - 1))], 1.2 * max(max(s) for _, s in series.values()))
    else:
        top_value = 1.0
    y_ticks = nice_ticks(0.0, top_value * 1.05 or 1.0, cover=True)
    y_max = y_ticks[-1] if y_ticks[-1] > 0 else 1.0

    def px(step: float) -> float:
        return x0 + (step - first) / (last - first) * (x1 - x0)

    def py(value: float) -> float:
        return y1 - min(max(value, 0.0), y_max) / y_max * (y1 - y0)

    for value in y_ticks:
        y = py(value)
        pen.line([(x0, y), (x1, y)], fill=GRID)
        text = _label(value)
        pen.text((x0 - 8 - pen.textlength(text, font=small), y - 7), text, fill=FAINT, font=small)
    for value in nice_ticks(first, last, 8, whole=True):
        if value < first or value > last:
            continue
        x = px(value)
        pen.line([(x, y0), (x, y1)], fill=GRID)
        text = f"{value:g}"
        pen.text((x - pen.textlength(text, font=small) / 2, y1 + 6), text, fill=FAINT, font=small)
    pen.rectangle([x0, y0, x1, y1], outline=FAINT)

    for key, (values, _) in series.items():
        _, light, _ = SERIES[key]
        points = [(px(s), py(v)) for s, v in zip(steps, values, strict=True)]
        if len(points) <= 200:  # few steps: joined dots; many: a cloud of dots, lines would be a mesh
            pen.line(points, fill=light, width=1)
        radius = 2 if len(points) <= 200 else 1.5
        for x, y in points:
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=light)
    for key, (_, smoothed) in series.items():  # smoothed lines on top of every raw line
        _, _, dark = SERIES[key]
        points = [(px(s), py(v)) for s, v in zip(steps, smoothed, strict=True)]
        if len(points) > 1:
            pen.line(points, fill=dark, width=3, joint="curve")

    # Axis titles: "step" under the x axis, "loss (MSE)" turned upright along the y axis.
    text = "step"
    pen.text(((x0 + x1) / 2 - pen.textlength(text, font=normal) / 2, height - 26), text, fill=INK, font=normal)
    text = "loss (MSE)"
    label = Image.new("RGB", (int(pen.textlength(text, font=normal)) + 4, 20), WHITE)
    ImageDraw.Draw(label).text((2, 0), text, fill=INK, font=normal)
    label = label.rotate(90, expand=True)
    image.paste(label, (8, int((y0 + y1) / 2 - label.height / 2)))

    # Legend, top right inside the plot: each series with its latest smoothed value.
    entries = [(SERIES[k][2], f"{SERIES[k][0]}  {s[-1]:.4f}") for k, (_, s) in series.items()]
    if not entries:
        entries = [(FAINT, "no steps logged yet")]
    box_w = max(pen.textlength(t, font=small) for _, t in entries) + 44
    bx, by = x1 - box_w - 10, y0 + 10
    pen.rectangle([bx, by, bx + box_w, by + 10 + 20 * len(entries)], fill=WHITE, outline=GRID)
    for i, (color, text) in enumerate(entries):
        y = by + 8 + 20 * i
        pen.line([(bx + 8, y + 7), (bx + 30, y + 7)], fill=color, width=3)
        pen.text((bx + 36, y), text, fill=INK, font=small)
    if series:
        note = f"light: each step; dark: mean of the last {smoothing_window(len(steps))} steps"
        pen.text((x1 - pen.textlength(note, font=small), 18), note, fill=FAINT, font=small)
    return image


def write_loss_chart(outdir: Path) -> Path:
    """Redraw loss.png from the run's loss log (written to a temporary name, then renamed into place)."""
    from dreamcli.io.outputs import replacing
    from dreamcli.training import rundir

    path = outdir / rundir.LOSS_CHART_NAME
    chart = loss_chart(rundir.read_losses(outdir), title=f"dream tune: {outdir.name}")
    with replacing(path) as f:
        chart.save(f, format="PNG")
    return path


def _wrap(pen: ImageDraw.ImageDraw, text: str, width: float, face, lines: int) -> list[str]:
    """Words of `text` in at most `lines` lines of `width` px; a cut ends with an ellipsis."""
    out, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if pen.textlength(trial, font=face) <= width or not current:
            current = trial
        else:
            out.append(current)
            current = word
    out.append(current)
    if len(out) > lines:
        out = out[:lines]
        out[-1] += " …"
    for i, line in enumerate(out):  # a single word wider than the cell
        while len(line) > 1 and pen.textlength(line, font=face) > width:
            line = line[:-2] + "…"
        out[i] = line
    return out


def cell_scale(size: int, min_cell: int = 192) -> int:
    """Whole-number upscaling that makes a small picture at least `min_cell` px wide (1 for big ones)."""
    return max(1, math.ceil(min_cell / size))


def validation_grid(images: list[Image.Image], prompts: list[str], seeds: list[int], step: int,
                    columns: int = 4, min_cell: int = 192) -> Image.Image:
    """One picture of a validation round: the images in a grid, each over a label with its seed and
    prompt, under a header with the step. Small images are enlarged by a whole factor with nearest
    neighbour, so their pixels stay as the model made them."""
    if not images:
        raise ValueError("a validation grid needs at least one image")
    w, h = images[0].size
    scale = cell_scale(w, min_cell)
    cw, ch = w * scale, h * scale
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    gap, pad, header, label_lines = 8, 6, 34, 2
    small, normal = font(13), font(16)
    label_h = pad + 17 * (1 + label_lines) + pad
    sheet = Image.new("RGB", (gap + columns * (cw + gap), header + rows * (ch + label_h + gap)), WHITE)
    pen = ImageDraw.Draw(sheet)
    pen.text((gap, 9), f"validation at step {step}", fill=INK, font=normal)
    for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds, strict=True)):
        x = gap + (i % columns) * (cw + gap)
        y = header + (i // columns) * (ch + label_h + gap)
        cell = image.convert("RGB")
        if cell.size != (w, h):
            cell = cell.resize((w, h), Image.Resampling.LANCZOS)
        sheet.paste(cell.resize((cw, ch), Image.Resampling.NEAREST) if scale > 1 else cell, (x, y))
        ty = y + ch + pad
        pen.text((x, ty), f"seed {seed}", fill=INK, font=small)
        for line in _wrap(pen, prompt, cw, small, label_lines):
            ty += 17
            pen.text((x, ty), line, fill=FAINT, font=small)
    return sheet


def write_validation_grid(path: Path, images: list[Image.Image], prompts: list[str], seeds: list[int],
                          step: int) -> Path:
    """Save a validation grid with its step, prompts and seeds in a PNG text chunk."""
    from dreamcli.io.outputs import replacing

    meta = PngInfo()
    meta.add_text(GRID_META_KEY, json.dumps({"step": step, "prompts": prompts, "seeds": seeds}))
    with replacing(path) as f:
        validation_grid(images, prompts, seeds, step).save(f, format="PNG", pnginfo=meta)
    return path
