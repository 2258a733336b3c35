"""What each model family contributes to DreamBooth-LoRA training: prompts, latents, noise, the denoiser call, targets.

The loop in dreambooth.py is the same for every family; a Recipe holds only what differs, as diffusers' own
train_dreambooth_lora{,_sdxl,_sd3,_flux}.py scripts differ. Recipes are looked up by the family's registry name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dreamcli.errors import InputError

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # a UNet's attention projections, as DreamBooth-LoRA does
# Plus the ResNet convolutions, the transformer blocks' in/out projections and feed-forwards (what kohya calls
# LoCon): a subject with a shape the model has never drawn needs the convolutions.
UNET_ALL = ATTENTION + ["conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
# MMDiT joint attention: the image stream's projections and the text stream's add_* ones (SD3 script's default).
JOINT_ATTENTION = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
]
FEED_FORWARD = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's attention projections
SD3_T5_TOKENS = 77  # the SD3 script's max_sequence_length
FLUX_GUIDANCE = 3.5  # what FLUX.1-dev's guidance embedding is fed while training (the Flux script's default)


@dataclass(frozen=True)
class Recipe:
    """One family's part of the training loop (see the module docstring)."""

    pipeline: str  # the diffusers pipeline class whose save_lora_weights writes (and lora_state_dict reads) its LoRAs
    encoders: tuple[str, ...]  # pipeline attributes of the text encoders, in the order encode() reads them
    lora_encoders: tuple[str, ...]  # those that get adapters with --train-text-encoder
    targets: dict[str, list[str]]  # --layers -> the denoiser's modules that get adapters
    tokenize: Callable[[object, str], dict]  # (pipe, prompt) -> token ids per encoder
    encode: Callable[[dict, dict], dict]  # (encoders by attribute, ids) -> conditioning tensors, batch first
    latents: Callable[[object, torch.Tensor], torch.Tensor]  # (vae, VAE sample) -> what the denoiser sees
    predict: Callable[..., torch.Tensor]  # (denoiser, noisy, timesteps, cond, geometry, resolution) -> prediction
    flow: bool = False  # flow matching (SD3, Flux) instead of DDPM noise
    precondition: bool = False  # SD3: the prediction is turned into an x0 estimate and compared with the latents
    text_targets: tuple[str, ...] = tuple(CLIP_TARGETS)  # what gets adapters in each trained text encoder

    def training_scheduler(self, pipe):
        """The noise schedule training draws from: a fresh copy, so sampling (class and validation images)
        cannot move its timesteps. Flow models keep their own (its sigmas carry the shift); DDPM for the rest."""
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        kind = FlowMatchEulerDiscreteScheduler if self.flow else DDPMScheduler
        return kind.from_config(pipe.scheduler.config)


def _clip_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _t5_ids(tokenizer, prompt: str, length: int) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                     return_tensors="pt").input_ids


def _penultimate(encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLIP encoder's penultimate hidden states and its first output (the projected pooled embedding of a
    CLIPTextModelWithProjection), as SDXL and SD3 condition on them."""
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]


# ---- SD 1.x / 2.x: one CLIP, the last hidden states, DDPM ----


def _sd_tokenize(pipe, prompt: str) -> dict:
    return {"text_encoder": _clip_ids(pipe.tokenizer, prompt)}


def _sd_encode(encoders: dict, ids: dict) -> dict:
    return {"prompt_embeds": encoders["text_encoder"](ids["text_encoder"])[0]}


def _scaled(vae, sample: torch.Tensor) -> torch.Tensor:
    return sample * vae.config.scaling_factor


def _unet_predict(unet, noisy, timesteps, cond, geometry, resolution):
    return unet(noisy, timesteps, cond["prompt_embeds"]).sample


# ---- SDXL: two CLIPs side by side, pooled from the second, size and crop conditioning ----


def _sdxl_tokenize(pipe, prompt: str) -> dict:
    return {"text_encoder": _clip_ids(pipe.tokenizer, prompt), "text_encoder_2": _clip_ids(pipe.tokenizer_2, prompt)}


def _sdxl_encode(encoders: dict, ids: dict) -> dict:
    first, _ = _penultimate(encoders["text_encoder"], ids["text_encoder"])
    second, pooled = _penultimate(encoders["text_encoder_2"], ids["text_encoder_2"])
    return {"prompt_embeds": torch.cat([first, second], dim=-1), "pooled": pooled}


def sdxl_time_ids(geometry: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDXL's micro-conditioning per example: original (height, width), crop (top, left), target (height, width).

    `geometry` holds each example's original size and crop top-left as the dataset recorded them.
    """
    target = torch.tensor([resolution, resolution], dtype=geometry.dtype, device=geometry.device)
    return torch.cat([geometry, target.expand(geometry.shape[0], 2)], dim=1)


def _sdxl_predict(unet, noisy, timesteps, cond, geometry, resolution):
    time_ids = sdxl_time_ids(geometry.to(noisy.device), resolution).to(cond["prompt_embeds"].dtype)
    added = {"text_embeds": cond["pooled"], "time_ids": time_ids}
    return unet(noisy, timesteps, cond["prompt_embeds"], added_cond_kwargs=added).sample


# ---- SD3 / 3.5 and Flux: flow matching on shifted, scaled latents ----


def _shifted(vae, sample: torch.Tensor) -> torch.Tensor:
    return (sample - vae.config.shift_factor) * vae.config.scaling_factor


def _sd3_tokenize(pipe, prompt: str) -> dict:
    ids = {"text_encoder": _clip_ids(pipe.tokenizer, prompt), "text_encoder_2": _clip_ids(pipe.tokenizer_2, prompt)}
    if pipe.text_encoder_3 is not None:
        ids["text_encoder_3"] = _t5_ids(pipe.tokenizer_3, prompt, SD3_T5_TOKENS)
    else:  # a model without T5 (--no-t5): zeros in its place, as the pipeline does
        zeros = pipe.tokenizer_max_length  # as many as the pipeline gives it (families/sd3.call_args)
        ids["t5_zeros"] = torch.zeros(1, zeros, pipe.transformer.config.joint_attention_dim)
    return ids


def _sd3_encode(encoders: dict, ids: dict) -> dict:
    first, pooled_1 = _penultimate(encoders["text_encoder"], ids["text_encoder"])
    second, pooled_2 = _penultimate(encoders["text_encoder_2"], ids["text_encoder_2"])
    clip = torch.cat([first, second], dim=-1)
    t5 = encoders["text_encoder_3"](ids["text_encoder_3"])[0] if "text_encoder_3" in ids else ids["t5_zeros"]
    t5 = t5.to(clip.dtype)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # CLIP widths padded to T5's
    return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled": torch.cat([pooled_1, pooled_2], dim=-1)}


def _sd3_predict(transformer, noisy, timesteps, cond, geometry, resolution):
    return transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=cond["prompt_embeds"],
                       pooled_projections=cond["pooled"], return_dict=False)[0]


def _flux_tokenize(pipe, prompt: str) -> dict:
    # dev was trained with 512 T5 tokens, schnell with 256 (as generation uses them).
    length = 512 if pipe.transformer.config.guidance_embeds else 256
    return {"text_encoder": _clip_ids(pipe.tokenizer, prompt),
            "text_encoder_2": _t5_ids(pipe.tokenizer_2, prompt, min(length, pipe.tokenizer_2.model_max_length))}


def _flux_encode(encoders: dict, ids: dict) -> dict:
    pooled = encoders["text_encoder"](ids["text_encoder"], output_hidden_states=False).pooler_output
    return {"prompt_embeds": encoders["text_encoder_2"](ids["text_encoder_2"], output_hidden_states=False)[0],
            "pooled": pooled}


def _flux_predict(transformer, noisy, timesteps, cond, geometry, resolution):
    from diffusers import FluxPipeline

    batch, channels, height, width = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)  # 2x2 patches as tokens
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, noisy.dtype)
    text_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    config = getattr(transformer, "config", None) or transformer.module.config
    guidance = torch.full((batch,), FLUX_GUIDANCE, device=noisy.device) if config.guidance_embeds else None
    out = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                      pooled_projections=cond["pooled"], encoder_hidden_states=cond["prompt_embeds"],
                      txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    # _unpack_latents takes pixel sizes and a VAE scale: with a scale of 1 the latent sizes are the pixel sizes.
    return FluxPipeline._unpack_latents(out, height, width, 1)


SD = Recipe(
    pipeline="StableDiffusionPipeline", encoders=("text_encoder",), lora_encoders=("text_encoder",),
    targets={"attention": ATTENTION, "all": UNET_ALL}, tokenize=_sd_tokenize, encode=_sd_encode, latents=_scaled,
    predict=_unet_predict,
)
RECIPES = {
    "sd1": SD,
    "sd2": SD,
    "sdxl": Recipe(
        pipeline="StableDiffusionXLPipeline", encoders=("text_encoder", "text_encoder_2"),
        lora_encoders=("text_encoder", "text_encoder_2"), targets={"attention": ATTENTION, "all": UNET_ALL},
        tokenize=_sdxl_tokenize, encode=_sdxl_encode, latents=_scaled, predict=_sdxl_predict,
    ),
    "sd3": Recipe(
        pipeline="StableDiffusion3Pipeline", encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
        lora_encoders=("text_encoder", "text_encoder_2"),  # the CLIPs; diffusers loads no T5 adapters for SD3
        targets={"attention": JOINT_ATTENTION, "all": JOINT_ATTENTION + FEED_FORWARD},
        tokenize=_sd3_tokenize, encode=_sd3_encode, latents=_shifted, predict=_sd3_predict, flow=True,
        precondition=True,
    ),
    "flux": Recipe(
        pipeline="FluxPipeline", encoders=("text_encoder", "text_encoder_2"), lora_encoders=("text_encoder",),
        # Attention and feed-forwards (the single blocks' q/k/v among them): the Flux script's set; "all" adds the
        # single blocks' MLP input, which kohya's format fuses with their q/k/v.
        targets={"attention": JOINT_ATTENTION + FEED_FORWARD, "all": JOINT_ATTENTION + FEED_FORWARD + ["proj_mlp"]},
        tokenize=_flux_tokenize, encode=_flux_encode, latents=_shifted, predict=_flux_predict, flow=True,
    ),
}


def refusal(label: str) -> str:
    """The one line that refuses a family dream tune cannot train."""
    from dreamcli import families

    names = [families.label(n) for n in families.DISPLAY_ORDER if n in RECIPES]
    return f"dream tune supports {', '.join(names[:-1])} and {names[-1]} models, not {label}: use one of those"


def recipe(family) -> Recipe:
    """The training recipe of a families.Family, or an InputError naming the families that have one."""
    found = RECIPES.get(family.name)
    if found is None:
        raise InputError(refusal(family.label))
    return found


def recipe_for(source, pipe):
    """(family, recipe) of a loaded base model (a hub download tells its family only once loaded)."""
    from dreamcli import families

    family = families.get(source.family) if source.family else families.for_pipeline(pipe)
    return family, recipe(family)


def text_encoders(pipe, recipe: Recipe) -> dict:
    """The pipeline's text encoders by attribute (absent ones left out)."""
    return {name: getattr(pipe, name) for name in recipe.encoders if getattr(pipe, name, None) is not None}
