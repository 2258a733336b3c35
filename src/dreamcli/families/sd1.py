"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, a UNet, epsilon prediction, 512 px."""

from __future__ import annotations

from pathlib import Path

from dreamcli.families import UNET, Family
from dreamcli.families.common import component_config, decode_vae, unet_native, vae_multiple

SD_CLASSES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"})
SD_PIPELINES = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "control-text2img": "StableDiffusionControlNetPipeline",
    "control-img2img": "StableDiffusionControlNetImg2ImgPipeline",
    "control-inpaint": "StableDiffusionControlNetInpaintPipeline",
}


def cross_attention_width(folder: Path) -> int | None:
    """The UNet's text width: 768 for SD 1.x (CLIP ViT-L), 1024 for SD 2.x (OpenCLIP ViT-H)."""
    return component_config(folder, "unet").get("cross_attention_dim")


def is_sd_folder(index: dict) -> bool:
    """An SD 1.x/2.x diffusers folder: the SD pipeline class, one text encoder and a UNet."""
    return index.get("_class_name") in SD_CLASSES and "text_encoder_2" not in index and "unet" in index


FAMILY = Family(
    name="sd1",
    label="SD 1.x",
    prompt_encoding="clip",
    index_classes=SD_CLASSES,
    pipelines=SD_PIPELINES,
    config_repos={"": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
    native_size=512,
    lora_kind=UNET,
    claims_folder=lambda index, folder: is_sd_folder(index) and cross_attention_width(folder) != 1024,
    # OpenAI CLIP ViT-L under the original (LDM) names; SD 2.x and SDXL are asked first.
    claims_keys=lambda keys: any(k.startswith("cond_stage_model.transformer.") for k in keys),
    decode=decode_vae,
    native=unet_native,
    size_multiple=vae_multiple,
    single_file_kwargs={"safety_checker": None, "requires_safety_checker": False},
)
