"""LoRA adapters (peft) on the UNet and text encoder, saved in diffusers and kohya formats."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcli.io.outputs import match_umask

UNET_TARGETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],  # attention projections, as DreamBooth-LoRA does
    # Plus the ResNet convolutions, the transformer blocks' in/out projections and feed-forwards (what
    # kohya calls LoCon): a subject with a shape the model has never drawn needs the convolutions.
    "all": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's attention projections


def add_adapters(
    unet, text_encoder, rank: int, alpha: float, train_text_encoder: bool, layers: str = "attention"
) -> list[torch.nn.Parameter]:
    """Freeze the model, add LoRA adapters to the UNet's `layers` (see UNET_TARGETS), and return the
    parameters to train."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    # Gaussian A and zero B: the adapter starts as an exact no-op, so step 0 is the base model.
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS[layers])
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    if train_text_encoder:
        text_encoder.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)
        )
        params += [p for p in text_encoder.parameters() if p.requires_grad]
    return params


def has_adapter(model) -> bool:
    """Whether peft adapters were added to this model."""
    return bool(getattr(model, "peft_config", None))


def diffusers_layers(model) -> dict[str, torch.Tensor]:
    """A model's LoRA weights, named as diffusers' save_lora_weights expects."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    peft_names = get_peft_model_state_dict(model)
    renamed = convert_state_dict_to_diffusers(peft_names)
    # diffusers renames only attention projections. Its loader picks the key style from the first key, so a
    # mix (convolutions with --layers all) would load half the adapters: then peft's names are kept throughout.
    return peft_names if any(".lora_A." in key for key in renamed) else renamed


def save_lora(folder: Path, unet, text_encoder=None, weight_name: str = "pytorch_lora_weights.safetensors") -> Path:
    """Write the adapters as one diffusers-format .safetensors file, with their peft config
    (rank, alpha) as metadata so loaders apply the right scale."""
    from diffusers import StableDiffusionPipeline

    text_layers = diffusers_layers(text_encoder) if text_encoder is not None and has_adapter(text_encoder) else None
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=diffusers_layers(unet),
        text_encoder_lora_layers=text_layers,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict() if text_layers else None,
        weight_name=weight_name,
    )
    match_umask(Path(folder) / weight_name)  # safetensors creates its files 0600
    return Path(folder) / weight_name


def load_lora(folder: Path, unet, text_encoder=None) -> None:
    """Put the adapter weights saved by save_lora back into models that already have adapters."""
    from diffusers import StableDiffusionPipeline
    from diffusers.training_utils import _set_state_dict_into_text_encoder
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
    unet_state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise RuntimeError(f"checkpoint {folder} does not fit the model's adapters: {missing[:3]}")
    if text_encoder is not None and has_adapter(text_encoder):
        _set_state_dict_into_text_encoder(state, prefix="text_encoder.", text_encoder=text_encoder)


def export_kohya(path: Path, unet, text_encoder, alpha: float) -> Path:
    """Write the adapters in the kohya/A1111 format (`lora_unet_*`, `lora_te_*`, `.alpha`), which
    A1111, ComfyUI and most UIs read."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    if text_encoder is not None and has_adapter(text_encoder):
        for key, value in get_peft_model_state_dict(text_encoder).items():
            # kohya names CLIP layers from `text_model.` (transformers 5 state dicts start below it).
            key = key if key.startswith("text_model.") else f"text_model.{key}"
            state[f"text_encoder.{key}"] = value
    kohya = {}
    for key, value in convert_state_dict_to_kohya(state).items():
        key = key.replace("lora_te1_", "lora_te_")  # SD1/SD2 have one text encoder: kohya says lora_te
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))  # the converter assumes alpha == rank
        kohya[key] = value.detach().cpu().contiguous()
    save_file(kohya, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha)})
    match_umask(path)  # safetensors creates its files 0600
    return path
