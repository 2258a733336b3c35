"""LoRA files in diffusers and kohya/A1111 formats change the picture; scale 0 leaves it alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from conftest import pixels, written

ATTN_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")


def _attention_linears(model_dir: Path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    return [(name, mod) for name, mod in unet.named_modules() if name.endswith(ATTN_PROJECTIONS)]


def _low_rank(module, rank: int, generator):
    down = torch.randn(rank, module.in_features, generator=generator) * 0.5
    up = torch.randn(module.out_features, rank, generator=generator) * 0.5
    return down, up


def make_diffusers_lora(model_dir: Path, path: Path, rank: int = 4) -> Path:
    """A LoRA in diffusers/peft naming (`unet.<module>.lora_A/B.weight`), as `dream tune` writes."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, module in _attention_linears(model_dir):
        down, up = _low_rank(module, rank, g)
        state[f"unet.{name}.lora_A.weight"] = down
        state[f"unet.{name}.lora_B.weight"] = up
    save_file(state, str(path))
    return path


def make_kohya_lora(model_dir: Path, path: Path, rank: int = 4) -> Path:
    """A LoRA in kohya/A1111 naming (`lora_unet_<module_with_underscores>.lora_down/up`, alpha)."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for name, module in _attention_linears(model_dir):
        down, up = _low_rank(module, rank, g)
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def _image(gen, *args):
    result, outdir = gen("a red circle", "-s", 3, *args)
    assert result.exit_code == 0, result.stderr
    return pixels(result.stdout.strip().splitlines()[-1])


def test_loras_change_the_image_and_scale_zero_does_not(gen, tiny, tmp_path):
    plain = _image(gen)
    diffusers_lora = make_diffusers_lora(tiny["sd1"], tmp_path / "pytorch_lora_weights.safetensors")
    kohya_lora = make_kohya_lora(tiny["sd1"], tmp_path / "kohya_style.safetensors")

    with_diffusers = _image(gen, "--lora", diffusers_lora)
    with_kohya = _image(gen, "--lora", kohya_lora)
    zero = _image(gen, "--lora", f"{kohya_lora}:0")
    again_plain = _image(gen)  # adapters are removed when a later request names none

    assert np.abs(with_diffusers - plain).mean() > 1
    assert np.abs(with_kohya - plain).mean() > 1
    assert np.abs(with_kohya - with_diffusers).mean() > 1
    assert np.abs(zero - plain).max() <= 1
    assert np.array_equal(again_plain, plain)


def test_lora_folder_and_metadata(gen, cli, tiny, tmp_path):
    folder = tmp_path / "tuned"
    folder.mkdir()
    make_diffusers_lora(tiny["sd1"], folder / "pytorch_lora_weights.safetensors")
    result, outdir = gen("a red circle", "-s", 3, "--lora", f"{folder}:0.5")
    assert result.exit_code == 0, result.stderr
    (path,) = written(outdir)
    info = cli("info", path)
    assert f"Loras: \"{folder}:0.5\"" in info.stdout
