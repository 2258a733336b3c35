"""Stable Diffusion 3 and 3.5: an MMDiT transformer, CLIP-L + CLIP-G + T5-XXL, flow matching, 1024 px."""

from __future__ import annotations

from contextlib import contextmanager

from dreamcli.families import Family
from dreamcli.families.common import decode_vae, has_any, patch_multiple, position_grid_side, transformer_native

CLASSES = frozenset({"StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"})
ORIGINAL = "model.diffusion_model."  # Stability AI's single files


def claims_keys(keys) -> bool:
    """SAI layout (`joint_blocks`, bare or under model.diffusion_model.), or a diffusers-layout SD3 transformer."""
    if has_any(keys, "joint_blocks.", ORIGINAL + "joint_blocks."):
        return True
    return "context_embedder.weight" in keys and "pos_embed.proj.weight" in keys and not has_any(keys, "adaln_single.")


def variant(keys) -> str:
    """SD 3.5 Medium has a second attention in its image blocks (MMDiT-X); 3.5 Large normalises q and k."""
    if any(".x_block.attn2." in key or ".attn2." in key for key in keys):
        return "sd35-medium"
    if any(".x_block.attn.ln_k." in key or ".attn.norm_k." in key for key in keys):
        return "sd35-large"
    return ""


def call_args(pipe, kwargs: dict) -> dict:
    """Without T5 the pipeline puts zeros in its place, by default 256 of them; SD3 was trained with T5 at 77
    tokens, the CLIP length, and demo-dit at its CLIP length (32): the zeros take the CLIP tokenizer's length."""
    if pipe.text_encoder_3 is None and "max_sequence_length" not in kwargs:
        return {"max_sequence_length": pipe.tokenizer_max_length}
    return {}


@contextmanager
def running(pipe):
    """diffusers' SD3 inpaint pipeline takes a transformer of 16 input channels, SD3's latent channels, for one
    that denoises the VAE's latents (33 is an inpainting model's), and refuses any other count. demo-dit's VAE
    has 4 channels, so for the call its transformer is presented as that plain case."""
    inpaint = type(pipe).__name__ == "StableDiffusion3InpaintPipeline"
    channels = pipe.vae.config.latent_channels if inpaint else 16
    if channels == 16 or pipe.transformer.config.in_channels != channels:
        yield
        return
    pipe.transformer.register_to_config(in_channels=16)
    try:
        yield
    finally:
        pipe.transformer.register_to_config(in_channels=channels)


FAMILY = Family(
    name="sd3",
    label="SD3",
    index_classes=CLASSES,
    pipelines={
        "text2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
        # Its inpaint ControlNet pipeline needs an inpainting ControlNet (extra mask channels): not offered.
        "control-text2img": "StableDiffusion3ControlNetPipeline",
    },
    controlnet_classes=("SD3ControlNetModel", "SD3MultiControlNetModel"),
    config_repos={
        "": "stabilityai/stable-diffusion-3-medium-diffusers",
        "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
        "sd35-large": "stabilityai/stable-diffusion-3.5-large",
    },
    native_size=1024,
    denoiser="transformer",
    t5_optional=True,  # its pipeline encodes zeros in T5's place (StableDiffusion3Pipeline._get_t5_prompt_embeds)
    denoiser_class="SD3Transformer2DModel",
    # Stability's all-in-one files carry the encoders; sd3.5_large.safetensors and the like do not.
    whole_file=lambda keys: has_any(keys, "text_encoders."),
    schedulers="flow",
    lora_kind="SD3",
    claims_folder=lambda index, folder: index.get("_class_name") in CLASSES,
    claims_keys=claims_keys,
    variant=variant,
    call_args=call_args,
    running=running,
    decode=decode_vae,
    native=transformer_native,
    size_multiple=patch_multiple,
    max_side=position_grid_side,
)
