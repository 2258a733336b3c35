"""Watching a dream tune run: loss.png (redrawn at each checkpoint), validation grids with the same seeds
every round, and the progress bar's speed, ETA, smoothed loss and peak memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamcli.training import plot


def colour_rows(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    """Row numbers of the pixels that have exactly this colour."""
    pixels = np.asarray(image.convert("RGB"))
    return np.nonzero((pixels == colour).all(axis=2))[0]


def steady(steps: int, instance: float, prior: float) -> list[dict]:
    return [{"step": s, "loss": instance + prior, "instance_loss": instance, "prior_loss": prior}
            for s in range(1, steps + 1)]


def test_the_loss_chart_puts_each_smoothed_line_at_its_value():
    chart = plot.loss_chart(steady(50, 0.2, 0.1))
    assert chart.width >= 800 and chart.height >= 400
    instance_dark, prior_dark = plot.SERIES["instance_loss"][2], plot.SERIES["prior_loss"][2]
    # Beyond the legend (top right), each line is flat: its rows tell the value it is drawn at.
    instance_y = np.median(colour_rows(chart.crop((0, 0, chart.width // 2, chart.height)), instance_dark))
    prior_y = np.median(colour_rows(chart.crop((0, 0, chart.width // 2, chart.height)), prior_dark))
    axis_y = chart.height - 58  # the x axis (zero loss): the chart's bottom margin
    assert (axis_y - instance_y) / (axis_y - prior_y) == pytest.approx(2.0, rel=0.05)


def test_the_loss_chart_leaves_out_a_prior_that_was_off_and_survives_an_empty_log():
    chart = plot.loss_chart(steady(20, 0.3, 0.0))
    assert len(colour_rows(chart, plot.SERIES["instance_loss"][2])) > 100
    assert len(colour_rows(chart, plot.SERIES["prior_loss"][2])) == 0
    empty = plot.loss_chart([])
    assert empty.size == chart.size


def test_smoothing_is_a_trailing_mean_and_the_axes_have_round_ticks():
    assert plot.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plot.smoothing_window(100) == 5 and plot.smoothing_window(2000) == 100
    assert plot.smoothing_window(10**6) == 200
    assert plot.nice_ticks(0, 1.3, cover=True) == [0, 0.5, 1.0, 1.5]  # the loss axis reaches above the top value
    assert plot.nice_ticks(0, 800, 8, whole=True) == list(range(0, 801, 100))
    assert plot.nice_ticks(0, 3, 8, whole=True) == [0, 1, 2, 3]  # steps, not 0.5 steps


def test_a_validation_grid_keeps_each_pictures_pixels_and_labels_it():
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for i in range(3)]
    grid = plot.validation_grid(images, ["a sks shape"] * 3, [7, 8, 9], step=40)
    scale = plot.cell_scale(32)
    assert scale * 32 >= 192  # a 32 px picture is enlarged to be seen
    assert grid.width >= 3 * 32 * scale
    cells = []
    for i, image in enumerate(images):  # cells at gap 8 from the left and under a 34 px header
        x, y = 8 + i * (32 * scale + 8), 34
        cell = grid.crop((x, y, x + 32 * scale, y + 32 * scale))
        assert np.array_equal(np.asarray(cell), np.asarray(image.resize(cell.size, Image.Resampling.NEAREST)))
        label = np.asarray(grid.crop((x, y + 32 * scale, x + 32 * scale, grid.height)).convert("L"))
        cells.append(label)
        assert (label < 128).sum() > 50  # text in the strip under the picture
    assert not np.array_equal(cells[0], cells[1])  # seed 7 and seed 8 read differently


def test_progress_text_has_speed_eta_loss_and_peak_memory():
    from dreamcli.cli.tune import progress_status

    text = progress_status("training", 120, 800, 7.61, {"loss": 0.12345, "memory": "RAM", "peak_mb": 618.2})
    assert text == "7.61 steps/s  ETA 0:01:29  loss 0.1235  peak RAM 618 MiB"
    big = progress_status("training", 0, 4000, 0.5, {"loss": 0.1, "memory": "GPU", "peak_mb": 10035.0})
    assert "ETA 2:13:20" in big and big.endswith("peak GPU 9.8 GiB")
    assert progress_status("training", 1, 800, None, {}) == ""  # nothing measured yet: nothing made up
    assert progress_status("class images", 3, 10, 2.0, {}) == "2.00 images/s  ETA 0:00:04"


@pytest.fixture(scope="module")
def watched(tiny, tmp_path_factory):
    """A 4-step run with a checkpoint and a validation round every 2 steps, watched through its hooks."""
    from dreamcli.training import dreambooth, rundir, tune
    from test_tune import config_for

    tmp = tmp_path_factory.mktemp("watch")
    # A class prompt of its own: class pictures cached here must not be a cache hit for another test's run.
    config = config_for(tiny, tmp, checkpointing_steps=2, validation_steps=2, num_validation_images=2,
                        class_prompt="a photo of shape, watched")
    charts, events = [], []
    real = plot.write_loss_chart

    def spy(outdir: Path) -> Path:
        path = real(outdir)
        charts.append((len(rundir.read_losses(outdir)), Image.open(path).size))
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dreambooth.plot, "write_loss_chart", spy)
        result = tune(config, on_progress=lambda stage, done, total, **info: events.append((stage, done, info)))
    return config, result, charts, events


def test_loss_png_is_redrawn_at_each_checkpoint_and_at_the_end(watched):
    config, result, charts, _ = watched
    # Checkpoints at steps 2 and 4 (the end): each redraw holds every step logged so far.
    assert [steps for steps, _ in charts] == [2, 4]
    assert all(width >= 800 for _, (width, _) in charts)
    chart = Image.open(Path(config.output_dir) / "loss.png")
    assert chart.width >= 800
    assert len(colour_rows(chart, plot.SERIES["instance_loss"][2])) > 20  # the run's curve is on it


def test_each_validation_round_is_one_grid_with_the_same_seeds(watched):
    config, result, _, _ = watched
    folder = Path(config.output_dir) / "validation"
    grids = sorted(folder.glob("step-??????.png"))
    assert [p.name for p in grids] == ["step-000002.png", "step-000004.png"]
    # Step 4 is a validation step and the end: one round for both, not two.
    assert [p.name for p in result.validation_images] == [
        "step-000002-0.png", "step-000002-1.png", "step-000004-0.png", "step-000004-1.png"]
    for grid_path in grids:
        grid = Image.open(grid_path)
        meta = json.loads(grid.text[plot.GRID_META_KEY])
        assert meta["seeds"] == [config.seed, config.seed + 1]  # the same every round
        assert meta["prompts"] == [config.instance_text] * 2
        step = meta["step"]
        assert grid_path.name == f"step-{step:06d}.png"
        scale = plot.cell_scale(32)
        first = Image.open(folder / f"step-{step:06d}-0.png")  # the round's first picture, saved alone too
        cell = grid.crop((8, 34, 8 + 32 * scale, 34 + 32 * scale))
        assert np.array_equal(np.asarray(cell), np.asarray(first.resize(cell.size, Image.Resampling.NEAREST)))


def test_training_progress_reports_smoothed_loss_and_peak_memory(watched):
    _, result, _, events = watched
    training = [(done, info) for stage, done, info in events if stage == "training" and done > 0]
    assert [done for done, _ in training] == [1, 2, 3, 4]
    for _, info in training:
        assert info["memory"] == "RAM" and 50 < info["peak_mb"] < 64_000  # MiB of this process
        assert 0 < info["loss"] < 10
    assert training[-1][1]["peak_mb"] == pytest.approx(result.peak_rss_mb, rel=0.2)
