"""LoRA adapters (peft) on the denoiser and text encoders, saved in diffusers format (kohya: training/kohya.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamcli.io.outputs import match_umask


@dataclass
class Adapted:
    """The models a run put adapters on: the denoiser under its pipeline attribute, and the text encoders
    trained with --train-text-encoder (attribute -> model); `pipeline` is the diffusers class whose
    save_lora_weights / lora_state_dict write and read this family's files."""

    pipeline: str
    denoiser_name: str
    denoiser: torch.nn.Module
    encoders: dict[str, torch.nn.Module] = field(default_factory=dict)

    def models(self) -> list[torch.nn.Module]:
        """The adapted models, denoiser first."""
        return [self.denoiser, *self.encoders.values()]


def add_adapters(
    adapted: Adapted, frozen: list[torch.nn.Module], rank: int, alpha: float, targets: list[str],
    text_targets: list[str],
) -> list[torch.nn.Parameter]:
    """Freeze every model, add LoRA adapters to the denoiser's `targets` and to `text_targets` of the adapted
    encoders, and return the parameters to train."""
    from peft import LoraConfig

    for model in [*frozen, *adapted.models()]:
        model.requires_grad_(False)
    # Gaussian A and zero B: the adapter starts as an exact no-op, so step 0 is the base model.
    adapted.denoiser.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    )
    for encoder in adapted.encoders.values():
        encoder.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=text_targets)
        )
    return [p for model in adapted.models() for p in model.parameters() if p.requires_grad]


def has_adapter(model) -> bool:
    """Whether peft adapters were added to this model."""
    return bool(getattr(model, "peft_config", None))


def diffusers_layers(model, old_names: bool = True) -> dict[str, torch.Tensor]:
    """A model's LoRA weights, named as diffusers' save_lora_weights expects: peft's names (`lora_A`) for
    transformer families, the older `lora.down` names for UNet families as their scripts write them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    peft_names = get_peft_model_state_dict(model)
    if not old_names:
        return peft_names
    renamed = convert_state_dict_to_diffusers(peft_names)
    # diffusers renames only attention projections. Its loader picks the key style from the first key, so a
    # mix (convolutions with --layers all) would load half the adapters: then peft's names are kept throughout.
    return peft_names if any(".lora_A." in key for key in renamed) else renamed


def save_lora(folder: Path, adapted: Adapted, weight_name: str = "pytorch_lora_weights.safetensors") -> Path:
    """Write the adapters as one diffusers-format .safetensors file, with their peft config
    (rank, alpha) as metadata so loaders apply the right scale."""
    import diffusers

    old_names = adapted.denoiser_name == "unet"
    kwargs = {
        f"{adapted.denoiser_name}_lora_layers": diffusers_layers(adapted.denoiser, old_names),
        f"{adapted.denoiser_name}_lora_adapter_metadata": adapted.denoiser.peft_config["default"].to_dict(),
    }
    for name, encoder in adapted.encoders.items():
        kwargs[f"{name}_lora_layers"] = diffusers_layers(encoder, old_names)
        kwargs[f"{name}_lora_adapter_metadata"] = encoder.peft_config["default"].to_dict()
    getattr(diffusers, adapted.pipeline).save_lora_weights(str(folder), weight_name=weight_name, **kwargs)
    match_umask(Path(folder) / weight_name)  # safetensors creates its files 0600
    return Path(folder) / weight_name


def load_lora(folder: Path, adapted: Adapted) -> None:
    """Put the adapter weights saved by save_lora back into models that already have adapters."""
    import diffusers
    from diffusers.training_utils import _set_state_dict_into_text_encoder
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict

    state = getattr(diffusers, adapted.pipeline).lora_state_dict(str(folder))
    state = state[0] if isinstance(state, tuple) else state  # some loaders also return alphas
    prefix = adapted.denoiser_name + "."
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    result = set_peft_model_state_dict(adapted.denoiser, convert_unet_state_dict_to_peft(own), adapter_name="default")
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise RuntimeError(f"checkpoint {folder} does not fit the model's adapters: {missing[:3]}")
    for name, encoder in adapted.encoders.items():
        _set_state_dict_into_text_encoder(state, prefix=f"{name}.", text_encoder=encoder)
