"""Stable Diffusion 2.x: OpenCLIP ViT-H text encoder, a UNet, v-prediction at 768 px (base: 512)."""

from __future__ import annotations

from dreamcli.families import UNET, Family
from dreamcli.families.common import decode_vae, unet_native, vae_multiple
from dreamcli.families.sd1 import SD_CLASSES, SD_PIPELINES, cross_attention_width, is_sd_folder

FAMILY = Family(
    name="sd2",
    label="SD 2.x",
    prompt_encoding="clip",
    index_classes=SD_CLASSES,
    pipelines=SD_PIPELINES,
    config_repos={"": "stabilityai/stable-diffusion-2-1"},
    native_size=768,
    lora_kind=UNET,
    claims_folder=lambda index, folder: is_sd_folder(index) and cross_attention_width(folder) == 1024,
    claims_keys=lambda keys: any(k.startswith("cond_stage_model.model.") for k in keys),  # OpenCLIP ViT-H
    decode=decode_vae,
    native=unet_native,
    size_multiple=vae_multiple,
    single_file_kwargs={"safety_checker": None, "requires_safety_checker": False},
)
