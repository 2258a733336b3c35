"""kohya sd-scripts SD3/SD3.5 LoRAs (as shared on civitai) renamed into the layout diffusers' SD3 pipeline loads."""

from __future__ import annotations

import math
import re
from pathlib import Path

from dreamcli.errors import LoraMismatch

UNET = "lora_unet_"
TEXT_ENCODERS = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}  # CLIP-L, CLIP-G
T5 = "lora_te3_"  # sd-scripts' prefix for T5-XXL, which diffusers' SD3 loader does not take LoRAs for
PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha")
OTHER_KINDS = {  # tensor-name endings of adapter kinds that are not a plain low-rank pair
    ".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".dora_scale": "DoRA", ".diff": "full-difference", ".oft_blocks": "OFT",
}

# One image (x) or text (context) block of Stability's MMDiT -> the modules of diffusers' JointTransformerBlock.
# Stability's fused q/k/v matrix becomes three diffusers projections, in that order.
BLOCK_MODULES = {
    ("x_block", "attn_qkv"): ("attn.to_q", "attn.to_k", "attn.to_v"),
    ("x_block", "attn_proj"): ("attn.to_out.0",),
    ("x_block", "attn2_qkv"): ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # SD 3.5 Medium's second attention
    ("x_block", "attn2_proj"): ("attn2.to_out.0",),
    ("x_block", "mlp_fc1"): ("ff.net.0.proj",),
    ("x_block", "mlp_fc2"): ("ff.net.2",),
    ("x_block", "adaln_modulation_1"): ("norm1.linear",),
    ("context_block", "attn_qkv"): ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ("context_block", "attn_proj"): ("attn.to_add_out",),
    ("context_block", "mlp_fc1"): ("ff_context.net.0.proj",),
    ("context_block", "mlp_fc2"): ("ff_context.net.2",),
    ("context_block", "adaln_modulation_1"): ("norm1_context.linear",),
}
TOP_MODULES = {  # layers outside the joint blocks (sd-scripts trains them when asked to)
    "context_embedder": "context_embedder",
    "x_embedder_proj": "pos_embed.proj",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaln_modulation_1": "norm_out.linear",
}
BLOCK = re.compile(r"joint_blocks_(\d+)_(x_block|context_block)_(\w+)")
CLIP_MODULE = re.compile(r"text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])")


def is_kohya_sd3(keys) -> bool:
    """Whether tensor names are a kohya sd-scripts SD3 LoRA (`lora_unet_joint_blocks_...`), not kohya Flux."""
    keys = list(keys)
    sd3 = any(key.startswith(UNET + "joint_blocks_") for key in keys)
    return sd3 and not any(key.startswith((UNET + "double_blocks_", UNET + "single_blocks_")) for key in keys)


def read_kohya_sd3(path: Path, source: str = "LoRA") -> dict | None:
    """The converted weights of a kohya SD3 LoRA file (see kohya_sd3_to_diffusers), or None when the file is
    not one (another layout, or not .safetensors): those go to diffusers' loader as they are."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        if not is_kohya_sd3(f.keys()):
            return None
    return kohya_sd3_to_diffusers(load_file(str(path)), source)


def kohya_sd3_to_diffusers(state_dict: dict, source: str = "LoRA") -> dict:
    """The same LoRA as `transformer.* / text_encoder.* / text_encoder_2.*` lora_A/lora_B weights, which
    `StableDiffusion3Pipeline.load_lora_weights(state_dict, adapter_name=...)` loads.

    Each module's alpha/rank scale is folded into its weights: diffusers' SD3 loader takes no alphas.
    Raises LoraMismatch naming the first tensor (in sorted order) that is not part of a kohya SD3 LoRA it
    can convert; `source` (e.g. "LoRA style.safetensors") begins each message.
    """
    modules = _group(state_dict, source)
    transformer, clip = {}, {}
    for name in sorted(modules):
        down, up = _scaled(source, name, modules[name])
        if name.startswith(UNET):
            _add_transformer_module(transformer, source, name, down, up)
        else:
            clip[name + ".lora_down.weight"], clip[name + ".lora_up.weight"] = down, up
    out = {f"transformer.{key}": value for key, value in transformer.items()}
    out.update(_clip_to_diffusers(clip))
    return out


def _group(state_dict: dict, source: str) -> dict[str, dict]:
    """kohya module name -> {"down", "up", "alpha"}, refusing any tensor this converter does not understand."""
    modules: dict[str, dict] = {}
    for key in sorted(state_dict):
        name, part = _split(key)
        if name.startswith(T5):
            raise LoraMismatch(
                f"{source} has tensor {key}, which trains SD3's T5 text encoder: diffusers loads SD3 LoRAs into the "
                "transformer and the CLIP encoders only, so use a LoRA without lora_te3_ weights"
            )
        if part is None or not _known_module(name):
            kind = next((k for ending, k in OTHER_KINDS.items() if key.endswith(ending)), None)
            what = f"a {kind} weight, not a LoRA" if kind else "not a layer of a kohya SD3 LoRA"
            raise LoraMismatch(
                f"{source} has tensor {key}, which is {what}: dream converts kohya SD3 LoRAs (lora_down, lora_up "
                "and alpha on the transformer, CLIP-L and CLIP-G)"
            )
        modules.setdefault(name, {})[part] = state_dict[key]
    for name, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            missing = "lora_up" if "down" in parts else "lora_down"
            raise LoraMismatch(f"{source} has no {name}.{missing}.weight: the file is incomplete, download it again")
    return modules


def _split(key: str) -> tuple[str, str | None]:
    for ending, part in zip(PARTS, ("down", "up", "alpha"), strict=True):
        if key.endswith(ending):
            return key[: -len(ending)], part
    return key.split(".")[0], None


def _known_module(name: str) -> bool:
    if name.startswith(UNET):
        return _transformer_modules(name[len(UNET):]) is not None
    prefix = next((p for p in TEXT_ENCODERS if name.startswith(p)), None)
    return prefix is not None and CLIP_MODULE.fullmatch(name[len(prefix):]) is not None


def _transformer_modules(module: str) -> tuple[str, ...] | None:
    """diffusers module paths (under the transformer) for a kohya module name without its `lora_unet_`."""
    if module.lower() in TOP_MODULES:
        return (TOP_MODULES[module.lower()],)
    match = BLOCK.fullmatch(module)
    if match is None:
        return None
    index, stream, layer = match.groups()
    targets = BLOCK_MODULES.get((stream, layer.lower()))
    return tuple(f"transformer_blocks.{index}.{target}" for target in targets) if targets else None


def _scaled(source: str, name: str, parts: dict):
    """(down, up) with kohya's alpha / rank folded in, split evenly between the two to keep fp16 in range."""
    down, up = parts["down"], parts["up"]
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise LoraMismatch(
            f"{source} has {name} with lora_down of rank {rank} and lora_up of rank {up.shape[1]}: the file is damaged"
        )
    alpha = parts.get("alpha")
    scale = float(alpha) / rank if alpha is not None else 1.0
    if scale == 1.0:
        return down, up
    root = math.sqrt(abs(scale))
    return (down.float() * root).to(down.dtype), (up.float() * math.copysign(root, scale)).to(up.dtype)


def _add_transformer_module(out: dict, source: str, name: str, down, up) -> None:
    module = name[len(UNET):]
    targets = _transformer_modules(module)
    if len(targets) > 1:
        if up.shape[0] % len(targets):
            raise LoraMismatch(f"{source} has {name} with {up.shape[0]} outputs, which do not split into q, k and v")
        # One shared input projection, the stacked output rows cut back into q, k and v. Copies of it, not
        # views: safetensors refuses to save tensors that share memory.
        for target, rows in zip(targets, up.chunk(len(targets), dim=0), strict=True):
            out[f"{target}.lora_A.weight"] = down.clone()
            out[f"{target}.lora_B.weight"] = rows.contiguous()
        return
    if up.ndim == 2 and down.ndim == 2 and up.shape[0] == 2 * down.shape[1] and "adaln" in module.lower():
        # A (shift, scale) modulation: the final layer's and the last context block's. diffusers'
        # AdaLayerNormContinuous reads (scale, shift), so the output rows swap halves, as the weights do.
        shift, scale = up.chunk(2, dim=0)
        up = _cat(scale, shift)
    out[f"{targets[0]}.lora_A.weight"] = down
    out[f"{targets[0]}.lora_B.weight"] = up


def _cat(*tensors):
    import torch

    return torch.cat(tensors, dim=0).contiguous()


def _clip_to_diffusers(clip: dict) -> dict:
    """CLIP-L/CLIP-G parts through diffusers' own kohya SD/SDXL text-encoder renaming, then into peft names."""
    if not clip:
        return {}
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    renamed, _alphas = _convert_non_diffusers_lora_to_diffusers(dict(clip))  # alphas are folded in already
    out = {}
    for prefix in TEXT_ENCODERS.values():
        part = {key[len(prefix) + 1:]: v for key, v in renamed.items() if key.startswith(prefix + ".")}
        if part:
            # Named, not guessed: diffusers guesses the old layout only when an out_proj is present, and fails
            # ("Could not automatically infer state dict type") for a LoRA on q/k/v alone.
            part = convert_state_dict_to_diffusers(part, original_type=StateDictType.DIFFUSERS_OLD)
            part = convert_state_dict_to_peft(part, original_type=StateDictType.DIFFUSERS)
            out.update({f"{prefix}.{key}": value for key, value in part.items()})
    return out
