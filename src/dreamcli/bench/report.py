"""Benchmark results: the issue's targets judged, written as JSON, and printed as a short table."""

from __future__ import annotations

import json
from pathlib import Path

from dreamcli.io.outputs import replacing

# (what, unit, comparison, limit): the targets of issue 6. GPU ones are judged on CUDA only.
GPU_TARGETS = {
    "sd15_speedup": ("SD1.5 512px batch 1 CFG, no compile: dreamcli it/s vs diffusers fp16", "x", ">=", 1.3),
    "sd15_compile": ("SD1.5 512px batch 1 CFG with --compile", "it/s", ">=", 100.0),
    "sdxl_compile": ("SDXL 1024px batch 1 CFG with --compile", "it/s", ">=", 20.0),
    "roofline_b8": ("{shape} batch 8: UNet share of the bf16 matmul peak (best dreamcli path)", "%", ">=", 45.0),
    "sd15_memory": ("SD1.5 fp16 batch 1 peak GPU memory", "GB", "<=", 3.5),
    "sd15_offload": ("SD1.5 fp16 batch 1 peak GPU memory with --offload", "GB", "<=", 2.5),
}
CLI_TARGETS = {
    "help": ("dream --help wall time", "s", "<=", 0.3),
    "dit": ("dream gen --preset demo-dit minus importing StableDiffusion3Pipeline", "s", "<=", 1.5),
    "prompts": ("--prompts of 10 demo prompts vs a shell loop of 10 dream gen", "x", ">=", 5.0),
}


def _target(spec: tuple, measured: float | None, why_not: str | None = None, **fill) -> dict:
    what, unit, op, limit = spec
    ok = None
    if why_not is None and measured is None:
        why_not = "not measured"
    if why_not is None:
        ok = measured >= limit if op == ">=" else measured <= limit
    return {"target": what.format(**fill), "unit": unit, "op": op, "limit": limit, "measured": measured,
            "ok": ok, "why_not_judged": why_not}


def _run(models: dict, shape: str, path: str, batch: int) -> dict | None:
    return models.get(shape, {}).get("paths", {}).get(path, {}).get("batch", {}).get(str(batch))


def evaluate_targets(results: dict) -> list[dict]:
    """Each target with the measured value and ok True/False, or None with the reason it was not judged."""
    meta = results["meta"]
    models = {m["shape"]: m for m in results["models"]}
    gpu = None if meta["device"].startswith("cuda") else f"needs a CUDA GPU (ran on {meta['device']})"
    fp16 = gpu or (None if meta["dtype"] == "fp16" else f"needs fp16 (ran in {meta['dtype']})")
    out = []

    sd15 = models.get("sd15", {}).get("ratios", {}).get("dreamcli", {}).get("batch", {}).get("1", {})
    out.append(_target(GPU_TARGETS["sd15_speedup"], sd15.get("it_per_s"), fp16))
    for key, shape in (("sd15_compile", "sd15"), ("sdxl_compile", "sdxl")):
        run = _run(models, shape, "dreamcli+compile", 1)
        out.append(_target(GPU_TARGETS[key], run and run["it_per_s"], gpu))
    for shape in [name for name in ("sd15", "sd21", "sdxl") if name in models] or ["sd15"]:
        fractions = []
        for path in models.get(shape, {}).get("paths", {}):
            run = _run(models, shape, path, 8)
            if path != "diffusers" and run and run["roofline"] is not None:
                fractions.append(run["roofline"])
        best = max(fractions) * 100 if fractions else None
        out.append(_target(GPU_TARGETS["roofline_b8"], best, gpu, shape=shape.upper().replace("SD15", "SD1.5")))
    for key, path in (("sd15_memory", "dreamcli"), ("sd15_offload", "dreamcli+offload")):
        run = _run(models, "sd15", path, 1)
        out.append(_target(GPU_TARGETS[key], run and run["peak_gb"], fp16))

    cli = results.get("cli")
    if cli is None:
        out += [_target(spec, None, "command-line figures not measured (--no-cli)") for spec in CLI_TARGETS.values()]
    else:
        out.append(_target(CLI_TARGETS["help"], cli["help_s"]))
        out.append(_target(CLI_TARGETS["dit"], cli.get("dit_gen_minus_import_s")))
        ten = None if cli["prompts"] == 10 else f"needs 10 prompts (ran {cli['prompts']})"
        out.append(_target(CLI_TARGETS["prompts"], cli["prompts_speedup"], ten))
    return out


def write_json(results: dict, path: Path) -> None:
    """Write the results to path through a temporary file, so a stopped run leaves no half-written JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, text=True) as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def num(value: float | None) -> str:
    """A measured number with about three significant digits; '-' when there is none."""
    if value is None:
        return "-"
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 \
        else f"{value:.3g}"


def table(results: dict) -> str:
    """The results as a short plain-text table (what `dream bench` prints)."""
    meta, lines = results["meta"], []
    v = meta["versions"]
    lines.append(f"dream bench on {meta['device']} ({meta['device_name']}), {meta['dtype']}; torch {v['torch']}, "
                 f"diffusers {v['diffusers']}, dreamcli {v['dreamcli']}; {meta['date']}")
    load, cores = (meta.get("load_average") or [0])[0], meta.get("cpu_count") or 1
    if load > cores:
        lines.append(f"note: the machine was busy (load average {load:.1f} on {cores} cores): times are inflated")
    if meta.get("cpu_s") is not None:
        lines.append(f"run: {num(meta['wall_s'])} s wall, {num(meta['cpu_s'])} s CPU (this process and its commands)")
    peak = results.get("matmul_peak")
    if peak:
        lines.append(f"matmul peak: {num(peak['tflops'])} TFLOP/s ({peak['dtype']}, {peak['n']}^3)")
    if results["models"]:
        s = results["settings"]
        lines.append(f"{s['steps']} steps per timed run (step 1 not timed), guidance {s['guidance_scale']:g}; "
                     "roofline = denoiser (UNet or transformer) FLOPs per step x it/s / matmul peak")
        lines.append(f"{'shape':12} {'path':19} {'batch':>5} {'load s':>7} {'it/s':>7} {'s/image':>8} "
                     f"{'peak GB':>8} {'TFLOP/s':>8} {'roofline':>9}")
    for model in results["models"]:
        if model["dtype"] != meta["dtype"]:
            lines.append(f"{model['shape']:12} runs in {model['dtype']} (published in it)")
        counted = model["denoiser_flops_per_step"] is not None  # None: a denoiser whose FLOPs are not counted
        for label, result in model["paths"].items():
            for batch, run in result["batch"].items():
                roof = "n/a" if not counted else "-" if run["roofline"] is None else f"{run['roofline'] * 100:.1f}%"
                lines.append(f"{model['shape']:12} {label:19} {batch:>5} {num(result['load_s']):>7} "
                             f"{num(run['it_per_s']):>7} {num(run['s_per_image']):>8} {num(run['peak_gb']):>8} "
                             f"{num(run['denoiser_tflops']):>8} {roof:>9}")
        for label, cmp in model["ratios"].items():
            parts = [f"b{b}: it/s {num(r['it_per_s'])}x, s/image {num(r['s_per_image'])}x"
                     + (f", memory {num(r['peak_memory'])}x" if r["peak_memory"] is not None else "")
                     for b, r in cmp["batch"].items()]
            lines.append(f"{'':12} {label} vs {cmp.get('baseline', 'diffusers')}: " + "; ".join(parts)
                         + f"; load {num(cmp['load_speedup'])}x")
    cli = results.get("cli")
    if cli:
        lines.append(
            f"CLI on cpu (median of {cli['runs']}): dream --help {num(cli['help_s'])} s; demo dream gen "
            f"{num(cli['demo_gen_s'])} s (diffusers import alone {num(cli['import_diffusers_s'])} s); "
            f"demo-dit dream gen {num(cli.get('dit_gen_s'))} s (import alone {num(cli.get('import_sd3_s'))} s); "
            f"{cli['prompts']} prompts: shell loop {num(cli['loop_s'])} s, --prompts {num(cli['prompts_file_s'])} s "
            f"= {num(cli['prompts_speedup'])}x"
        )
    lines.append("targets:")
    for t in results["targets"]:
        mark = "--" if t["ok"] is None else "ok" if t["ok"] else "MISS"
        got = "" if t["measured"] is None else f"{num(t['measured'])} {t['unit']} "
        why = f" [not judged: {t['why_not_judged']}]" if t["ok"] is None else ""
        lines.append(f"  {mark:4} {t['target']}: {got}(want {t['op']} {num(t['limit'])} {t['unit']}){why}")
    return "\n".join(lines)
