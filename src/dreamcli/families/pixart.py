"""PixArt-Σ: a DiT with cross-attention to T5-XXL (300 tokens), trained up to 2K px; text to image only."""

from __future__ import annotations

from dreamcli.families import Family, legacy_progress
from dreamcli.families.common import decode_vae, has_any, patch_multiple, transformer_native

CLASSES = frozenset({"PixArtSigmaPipeline"})
BINNED_SAMPLE_SIZES = (32, 64, 128, 256)  # the latent sizes PixArt-Σ has aspect-ratio tables for


def call_args(pipe, kwargs: dict) -> dict:
    """No caption cleaning (it needs bs4 and ftfy, and changes prompts behind the user's back); resolution
    binning (draw at the nearest trained aspect ratio, then resize to the asked size) where the model has
    tables for its size; an empty negative prompt as "" (its pipeline cannot take None)."""
    binning = pipe.transformer.config.sample_size in BINNED_SAMPLE_SIZES
    return {"clean_caption": False, "use_resolution_binning": binning,
            "negative_prompt": kwargs.get("negative_prompt") or ""}


FAMILY = Family(
    name="pixart",
    label="PixArt-Σ",
    index_classes=CLASSES,
    pipelines={"text2img": "PixArtSigmaPipeline"},
    config_repos={"": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"},
    native_size=1024,
    denoiser="transformer",
    denoiser_class="PixArtTransformer2DModel",
    lora="peft",
    single_file=False,  # diffusers has no single-file loader for PixArt
    claims_folder=lambda index, folder: index.get("_class_name") in CLASSES,
    claims_keys=lambda keys: has_any(keys, "adaln_single.", "t_block.") and has_any(keys, "caption_projection.",
                                                                                   "y_embedder."),
    call_args=call_args,
    decode=decode_vae,
    native=transformer_native,
    size_multiple=patch_multiple,
    progress=legacy_progress,
)
