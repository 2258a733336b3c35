"""What several families share: reading component configs, latent decoding, native sizes."""

from __future__ import annotations

from pathlib import Path


def component_config(folder: Path, component: str) -> dict:
    """A component's config.json in a diffusers folder ({} when absent)."""
    from dreamcli.families import read_json

    return read_json(folder / component / "config.json")


def has_any(keys, *prefixes: str) -> bool:
    """True when some tensor name starts with one of the prefixes (original checkpoints may nest them
    under `model.diffusion_model.`)."""
    return any(key.startswith(prefixes) for key in keys)


def unscale(vae, latents):
    """Undo the latent normalisation a VAE's config declares: mean/std (SDXL-style), or scale and shift
    (SD3 and Flux), or scale alone (SD 1.x)."""
    import torch

    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
        return latents * std / config.scaling_factor + mean
    shift = getattr(config, "shift_factor", None) or 0.0
    return latents / config.scaling_factor + shift


def decode_vae(pipe, vae, latents, width: int, height: int):
    """Pixels in [-1, 1] from image-shaped latents through an AutoencoderKL."""
    latents = unscale(vae, latents.to(vae.dtype))
    return vae.decode(latents, return_dict=False)[0]


def unet_native(pipe) -> int:
    """Side in pixels a UNet model was trained at: its sample size times the VAE's scale."""
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(sample) * int(pipe.vae_scale_factor)


def transformer_native(pipe) -> int:
    """Side in pixels a patch transformer was trained at (its sample size is in latent pixels)."""
    return int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)


def vae_multiple(pipe) -> int:
    """UNet models: sizes in whole VAE blocks."""
    return int(pipe.vae_scale_factor)


def position_grid_side(pipe) -> int | None:
    """SD3's transformer has position embeddings for a fixed grid (3072 px a side for SD3 Medium): a larger
    picture fails inside diffusers."""
    config = pipe.transformer.config
    grid = getattr(config, "pos_embed_max_size", None)
    return int(grid) * int(config.patch_size or 1) * int(pipe.vae_scale_factor) if grid else None


def patch_multiple(pipe) -> int:
    """Patch transformers: sizes in whole patches of VAE blocks."""
    return int(pipe.vae_scale_factor) * int(getattr(pipe.transformer.config, "patch_size", 2) or 2)
