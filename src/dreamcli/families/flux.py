"""Flux.1 (dev, schnell): a 12 B rectified-flow transformer, CLIP-L + T5-XXL, 2x2-packed latents, 1024 px."""

from __future__ import annotations

from dreamcli.errors import InputError
from dreamcli.families import Family
from dreamcli.families.common import decode_vae, has_any

CLASSES = frozenset({"FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"})


def claims_keys(keys) -> bool:
    """Black Forest Labs' layout (`double_blocks`, maybe under model.diffusion_model.) or diffusers' own."""
    bfl = has_any(keys, "double_blocks.", "model.diffusion_model.double_blocks.")
    return bfl or has_any(keys, "single_transformer_blocks.", "transformer.single_transformer_blocks.")


def variant(keys) -> str:
    """dev is guidance-distilled and has a guidance embedder; schnell has none."""
    guided = any("guidance_in." in key or "guidance_embedder." in key for key in keys)
    return "" if guided else "schnell"


def call_args(pipe, kwargs: dict) -> dict:
    """schnell was trained with 256 T5 tokens, dev with 512 (the pipeline's default). A negative prompt does
    nothing without true CFG (a second pass, `true_cfg_scale` > 1), which dream does not run: refused."""
    if kwargs.get("negative_prompt"):
        raise InputError(
            "--negative has no effect on Flux.1 models (they are guidance-distilled and take no negative prompt): "
            "leave it out"
        )
    return {} if pipe.transformer.config.guidance_embeds else {"max_sequence_length": 256}


def decode(pipe, vae, latents, width: int, height: int):
    """Flux's pipeline returns latents packed in 2x2 patches: unpack to an image shape, then decode."""
    if latents.ndim == 3:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return decode_vae(pipe, vae, latents, width, height)


FAMILY = Family(
    name="flux",
    label="Flux.1",
    index_classes=CLASSES,
    pipelines={"text2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline",
               "control-text2img": "FluxControlNetPipeline", "control-img2img": "FluxControlNetImg2ImgPipeline",
               "control-inpaint": "FluxControlNetInpaintPipeline"},
    controlnet_classes=("FluxControlNetModel", "FluxMultiControlNetModel"),
    config_repos={"": "black-forest-labs/FLUX.1-dev", "schnell": "black-forest-labs/FLUX.1-schnell"},
    native_size=1024,
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    whole_file=lambda keys: False,  # shared as transformer files; encoders and VAE come from the configs
    schedulers="flow",
    lora_kind="Flux.1",
    claims_folder=lambda index, folder: index.get("_class_name") in CLASSES,
    claims_keys=claims_keys,
    variant=variant,
    call_args=call_args,
    # dev takes the guidance scale as an input (distilled guidance, no second pass); schnell ignores it.
    guidance=lambda pipe: "distilled" if pipe.transformer.config.guidance_embeds else "none",
    decode=decode,
    native=lambda pipe: int(pipe.default_sample_size) * int(pipe.vae_scale_factor),
    size_multiple=lambda pipe: int(pipe.vae_scale_factor) * 2,  # latents are packed 2x2
)
