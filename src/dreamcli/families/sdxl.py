"""SDXL: two text encoders (CLIP ViT-L and OpenCLIP bigG), size conditioning, a UNet, 1024 px."""

from __future__ import annotations

from dreamcli.families import UNET, Family
from dreamcli.families.common import decode_vae, unet_native, vae_multiple

CLASSES = frozenset(
    {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
)

FAMILY = Family(
    name="sdxl",
    label="SDXL",
    prompt_encoding="clip-pair",
    index_classes=CLASSES,
    pipelines={
        "text2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
        "control-text2img": "StableDiffusionXLControlNetPipeline",
        "control-img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "control-inpaint": "StableDiffusionXLControlNetInpaintPipeline",
        # ControlNet-Union (one model, many types): AutoPipeline's from_pipe does not pick these (diffusers 0.42)
        "control-union-text2img": "StableDiffusionXLControlNetUnionPipeline",
        "control-union-img2img": "StableDiffusionXLControlNetUnionImg2ImgPipeline",
        "control-union-inpaint": "StableDiffusionXLControlNetUnionInpaintPipeline",
    },
    config_repos={"": "stabilityai/stable-diffusion-xl-base-1.0"},
    native_size=1024,
    lora_kind=UNET,
    claims_folder=lambda index, folder: index.get("_class_name") in CLASSES
    or ("text_encoder_2" in index and "unet" in index),
    claims_keys=lambda keys: any(k.startswith("conditioner.embedders.1.") for k in keys),  # OpenCLIP bigG
    decode=decode_vae,
    native=unet_native,
    size_multiple=vae_multiple,
    upcast_vae=True,  # its fp16 VAE overflows (force_upcast in its config)
)
