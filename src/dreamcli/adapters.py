"""LoRA adapters put on a denoiser through peft, for families whose pipelines have no LoRA loader
(PixArt-Σ, Kandinsky 2.2).

Reads peft adapter folders (adapter_config.json + adapter_model.safetensors) and diffusers-layout LoRA
files (`transformer.` / `unet.` prefixed lora_A/lora_B weights).
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamcli.errors import LoraMismatch

PREFIXES = ("base_model.model.", "transformer.", "unet.", "decoder.")
PARTS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")


def _module_key(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def read_lora(path: Path) -> tuple[dict, dict]:
    """(state dict with bare module names, LoRA settings: rank, alpha, target modules) of one file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = {_module_key(key): value for key, value in load_file(str(path)).items()}
    state = {key.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v for key, v in state.items()}
    down = {key.split(".lora_A.")[0]: value for key, value in state.items() if ".lora_A." in key}
    if not down:
        raise LoraMismatch(f"LoRA {path.name} holds no lora_A/lora_B weights: give a peft or diffusers-format LoRA")
    rank = max(value.shape[0] for value in down.values())
    settings = {"r": rank, "lora_alpha": rank, "target_modules": sorted(down),
                "rank_pattern": {module: value.shape[0] for module, value in down.items() if value.shape[0] != rank}}
    config = path.with_name("adapter_config.json")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if config.is_file():  # a peft adapter folder says its own alpha and patterns
        saved = json.loads(config.read_text())
        settings.update({k: saved[k] for k in ("lora_alpha", "rank_pattern", "alpha_pattern") if saved.get(k)})
    elif "lora_adapter_metadata" in meta:  # diffusers writes the LoraConfig into the file's metadata
        saved = json.loads(meta["lora_adapter_metadata"])
        settings.update({k: saved[k] for k in ("lora_alpha", "rank_pattern", "alpha_pattern") if saved.get(k)})
    return state, settings


def load_adapter(model, path: Path, name: str) -> None:
    """Add the LoRA at `path` to `model` as adapter `name`; a LoRA for other layers is refused."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    state, settings = read_lora(path)
    modules = dict(model.named_modules())
    missing = [module for module in settings["target_modules"] if module not in modules]
    if missing:
        raise LoraMismatch(
            f"LoRA {path.name} has weights for layers this model lacks (e.g. {missing[0]}): it was made for "
            "another model"
        )
    inject_adapter_in_model(LoraConfig(**settings), model, adapter_name=name)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = [key for key in getattr(result, "unexpected_keys", []) if "lora_" in key]
    if unexpected:
        raise LoraMismatch(f"LoRA {path.name} does not fit this model: {unexpected[0]} has no place in it")


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def set_adapters(model, names: list[str], weights: list[float]) -> None:
    """Make exactly these adapters active, each at its weight (the LoRA's scale)."""
    for layer in _tuner_layers(model):
        present = [name for name in names if name in layer.lora_A]
        layer.set_adapter(present)
        for name, weight in zip(names, weights, strict=True):
            if name in layer.lora_A:
                layer.set_scale(name, weight)


def adapter_names(model) -> set[str]:
    """The adapters loaded on a model."""
    return {name for layer in _tuner_layers(model) for name in layer.lora_A}


def unload(model) -> None:
    """Remove every adapter: the wrapped layers compute their base weights alone again."""
    for layer in _tuner_layers(model):
        for name in list(layer.lora_A):
            layer.delete_adapter(name)
