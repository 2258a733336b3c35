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
    flops = model["denoiser_flops_per_step"]
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


def _results(device: str, dtype: str, sd15_speedup: float, help_s: float, prompts: int = 10,
             dit_s: float = 1.2) -> dict:
    run = {"it_per_s": 110.0, "s_per_image": 0.3, "peak_gb": 3.0, "roofline": 0.5}
    return {
        "meta": {"device": device, "dtype": dtype},
        "models": [{"shape": "sd15",
                    "paths": {"diffusers": {"batch": {"1": run, "8": {**run, "roofline": 0.9}}},
                              "dreamcli": {"batch": {"1": run, "8": {**run, "roofline": 0.4}}},
                              "dreamcli+compile": {"batch": {"1": run, "8": run}},
                              "dreamcli+offload": {"batch": {"1": {**run, "peak_gb": 2.7}}}},
                    "ratios": {"dreamcli": {"batch": {"1": {"it_per_s": sd15_speedup}}}}}],
        "cli": {"help_s": help_s, "prompts": prompts, "prompts_speedup": 6.0, "dit_gen_minus_import_s": dit_s},
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
    dit = next(t for name, t in by_name.items() if "demo-dit" in name)
    assert dit["ok"] is True and dit["measured"] == 1.2
    assert next(t for t in evaluate_targets(_results("cpu", "fp32", 1.0, 0.2, dit_s=1.6)) if "demo-dit" in t["target"])[
        "ok"] is False  # want <= 1.5 s

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
    presets = [c[c.index("--preset") + 1] for c in gens]
    assert presets == ["demo"] * 2 + ["demo-dit"] * 2 + ["demo"] * 4  # demo-dit's start-up is timed too
    loop = [c[-1] for c in gens[4:7]]
    assert len(set(loop)) == 3 and all(p.endswith("background") for p in loop)  # three different prompts
    assert gens[7][-2] == "--prompts" and len(gens) == 8  # 2+2 single runs, 3 in the loop, 1 with the file
    assert figures["prompts"] == 3 and figures["runs"] == 2
    assert figures["prompts_speedup"] == pytest.approx(figures["loop_s"] / figures["prompts_file_s"])
    assert figures["demo_gen_minus_import_s"] == pytest.approx(figures["demo_gen_s"] - figures["import_diffusers_s"])
    assert figures["dit_gen_minus_import_s"] == pytest.approx(figures["dit_gen_s"] - figures["import_sd3_s"])


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


# ---------------------------------------------------------------- SD3 and Flux shapes


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    """`dream bench --fp8` on the tiny SD3 and Flux shapes: both paths, plain and with fp8 weights, batches 1 and 2."""
    from typer.testing import CliRunner

    from dreamcli.cli import app

    root = tmp_path_factory.mktemp("bench-dit")
    out = root / "results.json"
    args = ["bench", "--shapes", "tiny-sd3,tiny-flux", "--no-cli", "--fp8", "--steps", "3", "--warmup", "0",
            "--batch-sizes", "1,2", "--device", "cpu", "--workdir", str(root / "work"), "-o", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result, json.loads(out.read_text())


def test_tiny_transformer_shapes_run_through_every_path(transformer_run):
    _, data = transformer_run
    models = {m["shape"]: m for m in data["models"]}
    assert list(models) == ["tiny-sd3", "tiny-flux"]
    # The plain-diffusers path takes the pipeline class the family registry names.
    expected = (("tiny-sd3", "sd3", "StableDiffusion3Pipeline"), ("tiny-flux", "flux", "FluxPipeline"))
    for name, family, pipeline in expected:
        model = models[name]
        assert (model["family"], model["denoiser"], model["width"], model["height"]) == (family, "transformer", 32, 32)
        assert model["dtype"] == "fp32"  # bf16 replaces only fp16, and only on a GPU
        paths = model["paths"]
        assert set(paths) == {"diffusers", "dreamcli", "diffusers+fp8", "dreamcli+fp8"}
        assert paths["diffusers"]["pipeline"] == paths["diffusers+fp8"]["pipeline"] == pipeline
        for label, path in paths.items():
            # fp8 paths keep the transformer's weights in fp8 (computing in the run's dtype), the others don't.
            assert path["weights"] == ("float8_e4m3fn" if label.endswith("+fp8") else "float32"), label
            assert set(path["batch"]) == {"1", "2"}
            for run in path["batch"].values():
                assert run["it_per_s"] > 0 and run["s_per_image"] > 0 and run["peak_gb"] is None


def test_fp8_paths_are_compared_with_fp8_diffusers(transformer_run):
    result, data = transformer_run
    model = data["models"][1]
    ratios, paths = model["ratios"], model["paths"]
    assert {label: r["baseline"] for label, r in ratios.items()} == {
        "dreamcli": "diffusers", "diffusers+fp8": "diffusers", "dreamcli+fp8": "diffusers+fp8"}
    ours, theirs = paths["dreamcli+fp8"]["batch"]["2"], paths["diffusers+fp8"]["batch"]["2"]
    assert ratios["dreamcli+fp8"]["batch"]["2"]["it_per_s"] == pytest.approx(ours["it_per_s"] / theirs["it_per_s"])
    lines = result.stdout.splitlines()
    assert sum("dreamcli+fp8 vs diffusers+fp8: b1: it/s" in line for line in lines) == 2  # once per shape
    rows = [line.split() for line in lines if line.startswith("tiny-flux ")]
    assert [(r[1], r[2]) for r in rows][-2:] == [("dreamcli+fp8", "1"), ("dreamcli+fp8", "2")]


def test_transformer_flops_count_a_second_pass_only_for_cfg(transformer_run):
    """SD3 runs classifier-free guidance (two rows per image); Flux dev's guidance is an input, one row."""
    from dreamcli.bench.roofline import denoiser_flops

    _, data = transformer_run
    for model in data["models"]:
        flops = {int(b): f for b, f in model["denoiser_flops_per_step"].items()}
        assert flops[2] == 2 * flops[1] > 0
        size = (model["width"], model["height"])
        unguided = denoiser_flops(model["folder"], model["family"], (1,), size, guidance_scale=1.0)[1]
        assert flops[1] == (2 * unguided if model["family"] == "sd3" else unguided), model["shape"]
        run = model["paths"]["dreamcli"]["batch"]["1"]
        assert run["roofline"] == pytest.approx(flops[1] * run["it_per_s"] / 1e12 / data["matmul_peak"]["tflops"])


def _millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_sd35_medium_and_flux_dev_have_the_published_sizes(tmp_path):
    """Built as the bench builds them, on the meta device (no memory): SD3.5 Medium's 2.5 B and Flux.1 dev's 12 B
    transformers, their VAE and CLIPs, and T5-XXL cut to 2 layers but otherwise as published."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from dreamcli.bench.shapes import SHAPES, T5_XXL, build_pipeline, make_tokenizer

    tokenizer = make_tokenizer(tmp_path)
    sd3 = build_pipeline(SHAPES["sd35-medium"], tokenizer, "meta", torch.bfloat16)
    flux = build_pipeline(SHAPES["flux-dev"], tokenizer, "meta", torch.bfloat16)
    assert (type(sd3).__name__, type(flux).__name__) == ("StableDiffusion3Pipeline", "FluxPipeline")
    assert sd3.transformer.dtype == flux.transformer.dtype == torch.bfloat16  # made in bf16, not cast from fp32
    # 2.24 B parameters, plus the 384 x 384 x 1536 positional table its checkpoint stores: 2.47 B, "2.5 B".
    assert 2200 < _millions(sd3.transformer) < 2600
    assert 2400 < sum(t.numel() for t in sd3.transformer.state_dict().values()) / 1e6 < 2600
    assert 11500 < _millions(flux.transformer) < 12500  # 11.90 B
    for pipe in (sd3, flux):  # SD's VAE widened to 16 latent channels, without the quant convs
        assert round(_millions(pipe.vae), 1) == 83.8 and pipe.vae_scale_factor == 8
    # SD3 reads both CLIPs' pooled (projected) embeddings, Flux only CLIP-L's plain pooled output.
    assert [round(_millions(e), 1) for e in (sd3.text_encoder, sd3.text_encoder_2, flux.text_encoder)] \
        == [123.7, 694.7, 123.1]
    with torch.device("meta"):  # T5-XXL as published is 4.76 B; the shapes keep everything but the layer count
        assert round(_millions(T5EncoderModel(T5Config(**T5_XXL))) / 1000, 2) == 4.76
    for pipe, t5 in ((sd3, sd3.text_encoder_3), (flux, flux.text_encoder_2)):
        assert {k: v for k, v in t5.config.to_dict().items() if k in T5_XXL and T5_XXL[k] != v} == {"num_layers": 2}
        assert t5.config.d_model == pipe.transformer.config.joint_attention_dim  # the width the transformer reads


@pytest.fixture(scope="module")
def full_size_configs(tmp_path_factory):
    """The configs of the sd35-medium and flux-dev folders (what the FLOP counter reads), written on meta."""
    import diffusers
    import torch

    from dreamcli.bench.shapes import SHAPES

    folders = {}
    for name, cls in (("sd35-medium", diffusers.SD3Transformer2DModel), ("flux-dev", diffusers.FluxTransformer2DModel)):
        folder = folders[name] = tmp_path_factory.mktemp(name)
        with torch.device("meta"):
            cls(**SHAPES[name].transformer).save_config(folder / "transformer")
            diffusers.AutoencoderKL(**SHAPES[name].vae).save_config(folder / "vae")
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return folders


def test_flux_dev_flops_per_step_at_1024_px(full_size_configs):
    """74 TFLOP per image and step: 57 blocks over 4096 image + 512 text tokens, 3072 wide.

    Each block costs 24 D^2 per token in its linear layers and 4 T^2 D in attention. The rule of thumb
    2 x parameters x tokens says 110 TFLOP: about a quarter of Flux's weights (the modulations) act once per image, and
    each token passes through only its own stream's weights in the 19 double blocks.
    """
    from dreamcli.bench.roofline import denoiser_flops, native_size

    folder = full_size_configs["flux-dev"]
    assert native_size(folder, 1024) == (1024, 1024)
    # Guidance-distilled: one pass per image at any scale (the tiny shapes' test checks the count's arithmetic).
    flops = denoiser_flops(folder, "flux", (1,), (1024, 1024), guidance_scale=3.5)[1]
    width, tokens = 3072, 64 * 64 + 512
    assert flops == pytest.approx(57 * (24 * width**2 * tokens + 4 * tokens**2 * width), rel=0.005)


def test_sd35_medium_flops_per_step_at_1024_px(full_size_configs):
    """11.2 TFLOP per pass at 1024 px (4096 image tokens, 77 CLIP + 256 T5 text tokens); CFG runs two passes."""
    from dreamcli.bench.roofline import denoiser_flops, native_size

    folder = full_size_configs["sd35-medium"]
    assert native_size(folder) == (1024, 1024)  # sample size 128 x the VAE's 8
    image, text, width = 64 * 64, 77 + 256, 1536
    tokens = image + text
    joint = 24 * width**2 * tokens + 4 * tokens**2 * width  # 24 blocks: linear layers and joint attention
    dual = 8 * width**2 * image + 4 * image**2 * width  # blocks 0-12: a second attention over the image alone
    last = 18 * width**2 * text  # the last block keeps only the text's q, k and v
    embed = 2 * 4096 * width * text + 4 * 64 * width * image  # text in, patches in and out
    expected = 24 * joint + 13 * dual - last + embed
    assert denoiser_flops(folder, "sd3", (1,), (1024, 1024), guidance_scale=4.5)[1] == pytest.approx(
        2 * expected, rel=0.005)


def test_a_denoiser_without_a_flop_count_says_na(tmp_path):
    """PixArt's transformer is not counted: no FLOPs, no roofline, and the table says n/a."""
    from dreamcli.bench.report import table
    from dreamcli.bench.roofline import denoiser_flops
    from dreamcli.bench.runner import add_roofline

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    assert denoiser_flops(tmp_path, "pixart", (1,), (1024, 1024), 4.5) is None
    result = {"load_s": 1.0, "batch": {"1": {"it_per_s": 2.0, "s_per_image": 0.5, "peak_gb": None}}}
    add_roofline(result, None, 100.0)
    assert result["batch"]["1"]["denoiser_tflops"] is None and result["batch"]["1"]["roofline"] is None
    results = {"meta": {"device": "cpu", "device_name": "x", "dtype": "fp32", "date": "2026", "versions": {
        "torch": "t", "diffusers": "d", "dreamcli": "c"}}, "settings": {"steps": 3, "guidance_scale": 4.5},
        "models": [{"shape": "pixart", "dtype": "fp32", "denoiser_flops_per_step": None,
                    "paths": {"diffusers": result}, "ratios": {}}], "targets": []}
    (row,) = [line.split() for line in table(results).splitlines() if line.startswith("pixart")]
    assert row[1:3] == ["diffusers", "1"] and row[-2:] == ["-", "n/a"]


def test_sd35_and_flux_run_in_bf16_on_a_gpu_where_the_run_is_fp16():
    from dreamcli.bench.settings import shape_dtype

    assert shape_dtype("flux-dev", "cuda", "fp16") == shape_dtype("sd35-medium", "cuda:1", "fp16") == "bf16"
    assert shape_dtype("sdxl", "cuda", "fp16") == "fp16"  # published in fp16 too
    assert shape_dtype("flux-dev", "cuda", "fp32") == "fp32"  # what the user asked for beyond half precision
    assert shape_dtype("flux-dev", "cpu", "fp16") == "fp16"
