"""`dream bench`: the JSON and table a user reads, ratios from the measured numbers, the CLI figures, bad flags."""

from __future__ import annotations

import json
import sys

import pytest

from dreamcli.bench.cli_times import measure_cli
from dreamcli.bench.report import evaluate_targets, num
from dreamcli.bench.settings import BenchConfig
from dreamcli.errors import DreamError


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `dream bench` on the tiny SD1 shape, batches 1 and 2, without the command-line figures."""
    from typer.testing import CliRunner

    from dreamcli.cli import app

    root = tmp_path_factory.mktemp("bench")
    out = root / "results.json"
    args = ["bench", "--quick", "--shapes", "tiny-sd", "--no-cli", "--steps", "3", "--warmup", "0",
            "--batch-sizes", "1,2", "--device", "cpu", "--workdir", str(root / "work"), "-o", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result, json.loads(out.read_text())


def test_json_records_where_and_how_it_ran(quick_run):
    _, data = quick_run
    meta, settings = data["meta"], data["settings"]
    assert meta["device"] == "cpu" and meta["dtype"] == "fp32" and meta["device_name"]
    assert {"torch", "diffusers", "transformers", "dreamcli"} <= set(meta["versions"])
    assert meta["date"][:2] == "20"
    assert meta["wall_s"] > 0 and meta["cpu_s"] > 0  # how much of the machine the run had
    assert settings["shapes"] == ["tiny-sd"] and settings["steps"] == 3 and settings["batch_sizes"] == [1, 2]
    assert settings["quick"] is True and settings["cli"] is False and settings["compile"] is False
    assert data["matmul_peak"]["tflops"] > 0 and data["matmul_peak"]["dtype"] == "float32"


def test_both_paths_measured_at_every_batch_size(quick_run):
    _, data = quick_run
    (model,) = data["models"]
    assert (model["shape"], model["family"], model["width"], model["height"]) == ("tiny-sd", "sd1", 32, 32)
    assert set(model["paths"]) == {"diffusers", "dreamcli"}
    for path in model["paths"].values():
        assert path["load_s"] > 0
        assert set(path["batch"]) == {"1", "2"}
        for run in path["batch"].values():
            assert run["it_per_s"] > 0 and run["s_per_image"] > 0 and run["peak_gb"] is None  # no GPU here
    # Two images per call: the time per image is the call's time halved.
    run = model["paths"]["dreamcli"]["batch"]["2"]
    assert run["s_per_image"] == pytest.approx(run["seconds"] / 2)


def test_ratios_and_roofline_come_from_the_measured_numbers(quick_run):
    _, data = quick_run
    (model,) = data["models"]
    ours, theirs = model["paths"]["dreamcli"], model["paths"]["diffusers"]
    ratios = model["ratios"]["dreamcli"]
    assert ratios["load_speedup"] == pytest.approx(theirs["load_s"] / ours["load_s"])
    for batch in ("1", "2"):
        assert ratios["batch"][batch]["it_per_s"] == pytest.approx(
            ours["batch"][batch]["it_per_s"] / theirs["batch"][batch]["it_per_s"])
        assert ratios["batch"][batch]["s_per_image"] == pytest.approx(
            theirs["batch"][batch]["s_per_image"] / ours["batch"][batch]["s_per_image"])
    # With guidance the UNet sees twice the batch; FLOPs grow exactly with it.
    flops = model["unet_flops_per_step"]
    assert flops["2"] == 2 * flops["1"] > 0
    run = ours["batch"]["2"]
    assert run["roofline"] == pytest.approx(flops["2"] * run["it_per_s"] / 1e12 / data["matmul_peak"]["tflops"])


def test_table_on_stdout_and_gpu_targets_not_judged_on_cpu(quick_run):
    result, data = quick_run
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dream bench on cpu")
    rows = [line.split() for line in lines if line.startswith("tiny-sd")]
    assert [(r[1], r[2]) for r in rows] == [("diffusers", "1"), ("diffusers", "2"),
                                            ("dreamcli", "1"), ("dreamcli", "2")]
    speedup = data["models"][0]["ratios"]["dreamcli"]["batch"]["1"]["it_per_s"]
    (ratio_line,) = [line for line in lines if "dreamcli vs diffusers" in line]
    assert f"b1: it/s {num(speedup)}x" in ratio_line
    gpu = [t for t in data["targets"] if t["unit"] in ("GB", "%", "it/s")]
    assert gpu and all(t["ok"] is None and "CUDA" in t["why_not_judged"] for t in gpu)
    assert "results written to" in result.stderr


@pytest.mark.parametrize(
    "name, unet, encoders",
    [("sd15", 859.5, [123.1]), ("sd21", 865.9, [340.4]), ("sdxl", 2567.5, [123.1, 694.7])],
)
def test_shapes_have_the_published_parameter_counts(name, unet, encoders):
    """Millions of parameters as the model cards give them (UNet, CLIP text encoders, 83.7M VAE)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreamcli.bench.shapes import SHAPES

    shape = SHAPES[name]
    millions = lambda module: round(sum(p.numel() for p in module.parameters()) / 1e6, 1)  # noqa: E731
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        assert millions(diffusers.UNet2DConditionModel(**shape.unet)) == unet
        assert millions(diffusers.AutoencoderKL(**shape.vae)) == 83.7
        kinds = [CLIPTextModel, CLIPTextModelWithProjection]
        assert [millions(kinds[i](CLIPTextConfig(**c))) for i, c in enumerate(shape.text_encoders)] == encoders


def test_sd15_unet_flops_per_step(tmp_path):
    """SD1.5 at 512 px is about 0.8 TFLOP per image per UNet call; guidance doubles the batch."""
    import diffusers
    import torch

    from dreamcli.bench.roofline import unet_flops
    from dreamcli.bench.shapes import SHAPES

    shape = SHAPES["sd15"]
    with torch.device("meta"):
        diffusers.UNet2DConditionModel(**shape.unet).save_config(tmp_path / "unet")
        diffusers.AutoencoderKL(**shape.vae).save_config(tmp_path / "vae")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    with_cfg = unet_flops(tmp_path, (1, 8), (512, 512), guidance_scale=7.5)
    assert with_cfg[1] == pytest.approx(1.61e12, rel=0.01) and with_cfg[8] == 8 * with_cfg[1]
    assert unet_flops(tmp_path, (1,), (512, 512), guidance_scale=1.0)[1] * 2 == with_cfg[1]


def _results(device: str, dtype: str, sd15_speedup: float, help_s: float, prompts: int = 10) -> dict:
    run = {"it_per_s": 110.0, "s_per_image": 0.3, "peak_gb": 3.0, "roofline": 0.5}
    return {
        "meta": {"device": device, "dtype": dtype},
        "models": [{"shape": "sd15",
                    "paths": {"diffusers": {"batch": {"1": run, "8": {**run, "roofline": 0.9}}},
                              "dreamcli": {"batch": {"1": run, "8": {**run, "roofline": 0.4}}},
                              "dreamcli+compile": {"batch": {"1": run, "8": run}},
                              "dreamcli+offload": {"batch": {"1": {**run, "peak_gb": 2.7}}}},
                    "ratios": {"dreamcli": {"batch": {"1": {"it_per_s": sd15_speedup}}}}}],
        "cli": {"help_s": help_s, "prompts": prompts, "prompts_speedup": 6.0},
    }


def test_targets_are_judged_from_the_figures():
    by_name = {t["target"]: t for t in evaluate_targets(_results("cuda", "fp16", 1.35, 0.5))}
    speedup = next(t for name, t in by_name.items() if name.startswith("SD1.5 512px batch 1 CFG, no compile"))
    assert speedup["ok"] is True and speedup["measured"] == 1.35
    roof = next(t for name, t in by_name.items() if name.startswith("SD1.5 batch 8"))
    assert roof["measured"] == pytest.approx(50.0) and roof["ok"] is True  # dreamcli's best, never diffusers'
    offload = next(t for name, t in by_name.items() if "--offload" in name)
    assert offload["measured"] == 2.7 and offload["ok"] is False  # want <= 2.5 GB
    sdxl = next(t for name, t in by_name.items() if name.startswith("SDXL"))
    assert sdxl["ok"] is None and sdxl["why_not_judged"] == "not measured"
    help_target = next(t for name, t in by_name.items() if name.startswith("dream --help"))
    assert help_target["ok"] is False  # 0.5 s > 0.3 s

    slow = {t["target"]: t for t in evaluate_targets(_results("cuda", "fp16", 1.2, 0.2, prompts=3))}
    assert slow[speedup["target"]]["ok"] is False
    prompts = next(t for name, t in slow.items() if name.startswith("--prompts"))
    assert prompts["ok"] is None and "needs 10 prompts" in prompts["why_not_judged"]
    bf16 = {t["target"]: t for t in evaluate_targets(_results("cuda", "bf16", 1.35, 0.2))}
    assert bf16[speedup["target"]]["ok"] is None and "fp16" in bf16[speedup["target"]]["why_not_judged"]


def test_cli_figures_run_the_loop_and_the_prompt_file(tmp_path):
    log = tmp_path / "calls.txt"
    # A stand-in for `dream` that records its arguments (one line per call) instead of generating.
    stand_in = [sys.executable, "-c",
                f"import sys; open({str(log)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')"]
    settings = BenchConfig(loop_prompts=3, runs=2, cli_steps=2)
    notes = []
    figures = measure_cli(settings, notes.append, dream=stand_in, reference=[sys.executable, "-c", "pass"])
    calls = [eval(line) for line in log.read_text().splitlines()]
    assert [c for c in calls if c == ["--help"]] == [["--help"]] * 2
    gens = [c for c in calls if c[:1] == ["gen"]]
    assert all(c[c.index("--device") + 1] == "cpu" and c[c.index("--steps") + 1] == "2" for c in gens)
    loop = [c[-1] for c in gens[2:5]]
    assert len(set(loop)) == 3 and all(p.endswith("background") for p in loop)  # three different prompts
    assert gens[5][-2] == "--prompts" and len(gens) == 6  # 2 single runs, 3 in the loop, 1 with the file
    assert figures["prompts"] == 3 and figures["runs"] == 2
    assert figures["prompts_speedup"] == pytest.approx(figures["loop_s"] / figures["prompts_file_s"])
    assert figures["demo_gen_minus_import_s"] == pytest.approx(figures["demo_gen_s"] - figures["import_diffusers_s"])


def test_cli_figures_name_a_failing_command(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.exit('no demo model here')"]
    with pytest.raises(DreamError, match="exit 1.*no demo model here"):
        measure_cli(BenchConfig(loop_prompts=1, runs=1), lambda _: None, dream=failing)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--shapes", "sd3"], "unknown shape 'sd3'"),
        (["--shapes", ","], "no shapes in ','"),
        (["--steps", "1"], "steps 1 is too few: use 2 or more"),
        (["--batch-sizes", "1,x"], "batch sizes '1,x' are not whole numbers"),
        (["--batch-sizes", "0"], "batch size 0 is too small"),
        (["--warmup", "-1"], "warmup -1 is negative"),
        (["--loop-prompts", "0"], "loop-prompts 0 is too small"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--device", "cuda"], "device cuda is not available here"),
    ],
)
def test_bad_flags_one_line_exit_2_nothing_written(cli, tmp_path, args, fragment):
    import torch

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r.json"
    result = cli("bench", "--no-cli", "--workdir", tmp_path / "work", "-o", out, *args)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert result.stdout == "" and not out.exists() and not (tmp_path / "work").exists()


def test_out_naming_a_folder_is_refused(cli, tmp_path):
    result = cli("bench", "--no-cli", "--shapes", "none", "-o", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.stderr and result.stdout == ""


def test_step_clock_times_steps_2_to_n_once_even_when_the_last_step_repeats(monkeypatch):
    from dreamcli.bench import runner

    now = iter([10.0, 12.0, 99.0])
    monkeypatch.setattr(runner.time, "perf_counter", lambda: next(now))
    clock = runner.StepClock("cpu")
    for done in (1, 2, 3, 3):  # PNDM: one callback more than steps, the last number repeated
        clock(done, 3)
    assert clock.rate() == 1.0  # 2 steps in 2 s; the repeated report at 99 s is not counted
