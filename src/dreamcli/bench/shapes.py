"""Pipelines shaped like SD1.5, SD2.1 and SDXL (published configs, random weights), saved as diffusers folders."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

DEMO = "demo"
DEMO_REF = "package:demo/model"

# The text encoders' published sizes. Token ids follow our own tokenizer (0 = start, 1 = end), which
# changes no shape: prompts are padded to 77 tokens either way.
_CLIP = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
CLIP_L = {**_CLIP, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
          "num_hidden_layers": 12, "hidden_act": "quick_gelu", "projection_dim": 768}
OPENCLIP_H = {**_CLIP, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512}
OPENCLIP_BIGG = {**_CLIP, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                 "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": 1280}

SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}
SD_UNET = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "in_channels": 4, "out_channels": 4,
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
           "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "norm_num_groups": 32}
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}

TINY_CLIP = {**_CLIP, "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
             "num_hidden_layers": 2, "projection_dim": 32}
TINY_VAE = {"block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 8, "sample_size": 32}
TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "in_channels": 4, "out_channels": 4,
             "sample_size": 16, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8}


@dataclass(frozen=True)
class Shape:
    """One pipeline layout: component configs as diffusers and transformers take them."""

    name: str
    family: str  # sd1 | sd2 | sdxl
    description: str
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    text_encoders: tuple[dict, ...] = ()  # SDXL: the second one has a projection (pooled embedding)
    scheduler: tuple[str, dict] = ("PNDMScheduler", {})
    full_size: bool = False  # hundreds of millions of parameters: slow on a CPU


SHAPES = {
    "sd15": Shape(
        "sd15", "sd1", "SD 1.5 (UNet 860M, CLIP ViT-L), 512 px",
        unet={**SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        vae=SD_VAE, text_encoders=(CLIP_L,),
        scheduler=("PNDMScheduler", {**SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False}),
        full_size=True,
    ),
    "sd21": Shape(
        "sd21", "sd2", "SD 2.1 (UNet 865M, OpenCLIP ViT-H), 768 px, v-prediction",
        unet={**SD_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
              "use_linear_projection": True, "upcast_attention": True},
        vae={**SD_VAE, "sample_size": 768}, text_encoders=(OPENCLIP_H,),
        scheduler=("DDIMScheduler", {**SD_BETAS, "prediction_type": "v_prediction", "clip_sample": False,
                                     "set_alpha_to_one": False}),
        full_size=True,
    ),
    "sdxl": Shape(
        "sdxl", "sdxl", "SDXL base (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG), 1024 px",
        unet={"block_out_channels": [320, 640, 1280], "layers_per_block": 2, "in_channels": 4, "out_channels": 4,
              "sample_size": 128, "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
              "up_block_types": ["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], "attention_head_dim": [5, 10, 20],
              "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
              "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32},  # 2816 = 6 x 256 + 1280
        vae={**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        text_encoders=(CLIP_L, OPENCLIP_BIGG),
        scheduler=("EulerDiscreteScheduler", {**SD_BETAS, "timestep_spacing": "leading"}),
        full_size=True,
    ),
    "tiny-sd": Shape(
        "tiny-sd", "sd1", "SD 1.x layout, tiny (checks the harness, not speed), 32 px",
        unet={**TINY_UNET, "cross_attention_dim": 32, "attention_head_dim": 4},
        vae=TINY_VAE, text_encoders=(TINY_CLIP,),
        scheduler=("PNDMScheduler", {**SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False}),
    ),
    "tiny-sdxl": Shape(
        "tiny-sdxl", "sdxl", "SDXL layout, tiny (checks the harness, not speed), 32 px",
        unet={**TINY_UNET, "cross_attention_dim": 64, "attention_head_dim": [2, 4], "use_linear_projection": True,
              "transformer_layers_per_block": [1, 1], "addition_embed_type": "text_time",
              "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80},  # 6 x 8 + 32
        vae=TINY_VAE, text_encoders=(TINY_CLIP, TINY_CLIP),
        scheduler=("EulerDiscreteScheduler", {**SD_BETAS, "timestep_spacing": "leading"}),
    ),
}
ALL_SHAPES = (DEMO, *SHAPES)  # "demo": the built-in model as shipped (trained weights)


def make_tokenizer(folder: Path):
    """A CLIP tokenizer padding to 77 tokens as SD's does, written here (no download).

    The vocabulary is the demo model's (small); the token count, which is what costs time, is SD's.
    """
    from transformers import CLIPTokenizer

    from dreamcli.demo.tokenizer import BOS, EOS, write_tokenizer

    write_tokenizer(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def build_pipeline(shape: Shape, tokenizer, device: str = "cpu"):
    """The shape's pipeline with random weights (seed 0), created directly on `device` (fast init on a GPU)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    scheduler_class, scheduler_config = shape.scheduler
    with torch.device(device):
        unet = diffusers.UNet2DConditionModel(**shape.unet)
        vae = diffusers.AutoencoderKL(**shape.vae)
        encoders = [CLIPTextModel(CLIPTextConfig(**shape.text_encoders[0]))]
        if shape.family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**shape.text_encoders[1])))
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    if shape.family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(
            unet=unet, vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer,
            tokenizer_2=tokenizer, scheduler=scheduler,
        )
    return diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=encoders[0], tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def saved_shape(name: str, workdir: Path, dtype: str, device: str = "cpu") -> Path:
    """The diffusers folder of a shape in `dtype` under workdir, built and saved on first use.

    Both benchmarked paths load from this folder, so their load times compare on equal terms.
    """
    if name == DEMO:
        from dreamcli.config import package_path

        return package_path(DEMO_REF)
    folder = Path(workdir) / f"{name}-{dtype}"
    if (folder / "model_index.json").is_file():
        return folder
    from dreamcli.engine import DTYPES

    partial = folder.with_name(folder.name + ".partial")  # renamed into place only once complete
    shutil.rmtree(partial, ignore_errors=True)
    build_device = device if device.startswith("cuda") else "cpu"
    pipe = build_pipeline(SHAPES[name], make_tokenizer(partial / "tokenizer-src"), build_device)
    pipe.to(dtype=DTYPES[dtype])
    pipe.save_pretrained(partial)
    shutil.rmtree(partial / "tokenizer-src")
    del pipe
    partial.rename(folder)
    return folder
