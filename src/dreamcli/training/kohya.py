"""LoRA adapters written in kohya sd-scripts' format, the one A1111, Forge and ComfyUI read for each family.

UNet families (SD 1.x/2.x, SDXL) keep diffusers' module names with underscores (`lora_unet_down_blocks_...`,
`lora_te_`/`lora_te1_`/`lora_te2_`), as diffusers' convert_state_dict_to_kohya writes them. SD3 and Flux use the
original checkpoints' names (`lora_unet_joint_blocks_0_x_block_attn_qkv`, `lora_unet_double_blocks_0_img_attn_qkv`),
where q, k and v are one fused matrix: their separate adapters are joined into one of the summed rank (the A
matrices stacked, the B matrices block-diagonal), which computes exactly the same update.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcli.io.outputs import match_umask
from dreamcli.training.lora import Adapted, has_adapter

TEXT_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}  # CLIP-L, CLIP-G (SD3, SDXL)

FLUX_DOUBLE = {  # Black Forest Labs' double-block layers -> diffusers' FluxTransformerBlock modules
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
FLUX_SINGLE = {  # single blocks: q, k, v and the MLP input share one matrix (linear1)
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}


def export_kohya(path: Path, family: str, adapted: Adapted, alpha: float) -> Path:
    """Write the adapters of a `family` (registry name) run in kohya format at `path`, with `.alpha` per module."""
    from safetensors.torch import save_file

    if adapted.denoiser_name == "unet":
        state = _unet_family(adapted, alpha, single_encoder=family in ("sd1", "sd2"))
    else:
        state = _transformer_family(adapted, alpha, family)
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})
    match_umask(path)  # safetensors creates its files 0600
    return path


def _encoder_state(encoder) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    # kohya names CLIP layers from `text_model.` (transformers 5 state dicts may start below it).
    return {key if key.startswith("text_model.") else f"text_model.{key}": value
            for key, value in get_peft_model_state_dict(encoder).items()}


def _unet_family(adapted: Adapted, alpha: float, single_encoder: bool) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(adapted.denoiser).items()}
    for name, encoder in adapted.encoders.items():
        if has_adapter(encoder):
            state.update({f"{name}.{key}": value for key, value in _encoder_state(encoder).items()})
    kohya = {}
    for key, value in convert_state_dict_to_kohya(state).items():
        if single_encoder:
            key = key.replace("lora_te1_", "lora_te_")  # SD1/SD2 have one text encoder: kohya says lora_te
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))  # the converter assumes alpha == rank
        kohya[key] = value
    return kohya


def _groups(transformer, family: str) -> dict[str, tuple[str, ...]]:
    """kohya module name -> the diffusers modules (under the transformer) it fuses, in row order."""
    groups = {}
    if family == "sd3":
        from dreamcli.lora_convert import BLOCK_MODULES

        for i in range(len(transformer.transformer_blocks)):
            for (stream, layer), targets in BLOCK_MODULES.items():
                groups[f"lora_unet_joint_blocks_{i}_{stream}_{layer}"] = tuple(
                    f"transformer_blocks.{i}.{t}" for t in targets
                )
    else:
        for i in range(len(transformer.transformer_blocks)):
            for layer, targets in FLUX_DOUBLE.items():
                groups[f"lora_unet_double_blocks_{i}_{layer}"] = tuple(f"transformer_blocks.{i}.{t}" for t in targets)
        for i in range(len(transformer.single_transformer_blocks)):
            for layer, targets in FLUX_SINGLE.items():
                groups[f"lora_unet_single_blocks_{i}_{layer}"] = tuple(
                    f"single_transformer_blocks.{i}.{t}" for t in targets
                )
    return groups


def _transformer_family(adapted: Adapted, alpha: float, family: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    peft_state = get_peft_model_state_dict(adapted.denoiser)
    kohya, used = {}, set()
    for name, members in _groups(adapted.denoiser, family).items():
        if not all(_has_module(adapted.denoiser, member) for member in members):
            continue  # SD3's last context block has no output projection or MLP; only 3.5 Medium has attn2
        parts = []
        for member in members:
            a, b = peft_state.get(f"{member}.lora_A.weight"), peft_state.get(f"{member}.lora_B.weight")
            if a is not None and b is not None:
                used.update({f"{member}.lora_A.weight", f"{member}.lora_B.weight"})
            parts.append((a, b, _out_features(adapted.denoiser, member)))
        trained = [(a, b) for a, b, _ in parts if a is not None]
        if not trained:
            continue
        rank = trained[0][0].shape[0]
        down = torch.cat([a for a, _ in trained])
        up = torch.zeros(sum(out for _, _, out in parts), down.shape[0], dtype=down.dtype)
        row = col = 0
        for a, b, out in parts:  # block-diagonal: each member's rows read only its own A
            if a is not None:
                up[row:row + out, col:col + a.shape[0]] = b
                col += a.shape[0]
            row += out
        kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"] = down, up
        # The scale alpha / rank stays what each member had, at the summed rank.
        kohya[f"{name}.alpha"] = torch.tensor(float(alpha) * down.shape[0] / rank)
    left = sorted(set(peft_state) - used)
    if left:
        raise RuntimeError(f"no kohya name for adapter weight {left[0]}")
    for name, encoder in adapted.encoders.items():
        prefix = TEXT_PREFIXES[name]
        for key, value in _encoder_state(encoder).items():
            module, part = key.rsplit(".lora_", 1)
            kind = "lora_down" if part.startswith("A") else "lora_up"
            kohya[f"{prefix}{module.replace('.', '_')}.{kind}.weight"] = value
            kohya[f"{prefix}{module.replace('.', '_')}.alpha"] = torch.tensor(float(alpha))
    return kohya


def _has_module(model, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _out_features(model, name: str) -> int:
    module = model.get_submodule(name)
    layer = getattr(module, "base_layer", module)
    return int(layer.out_features)
