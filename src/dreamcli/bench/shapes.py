"""Pipelines shaped like SD1.5, SD2.1, SDXL, SD3.5 Medium and Flux.1 dev (published configs, random weights),
saved as diffusers folders."""

from __future__ import annotations

import contextlib
import shutil
import string
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

# T5-XXL (t5-v1_1-xxl, SD3's third and Flux's second text encoder) as published: 4.76 B parameters, 9.5 GB in
# bf16. The shapes keep its width, heads and vocabulary but only 2 of its 24 layers: the denoiser reads the same
# 4096-wide features at the same token count (what the denoising loop costs), while each folder is 8.5 GB
# smaller and loads faster. The full encoder would cost about 5 TFLOP once per prompt (512 tokens), against
# Flux dev's 74 TFLOP per step: the loop's times stand, load times and memory are below the real model's.
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
          "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "is_encoder_decoder": False,
          "use_cache": False}
T5_XXL_CUT = {**T5_XXL, "num_layers": 2}
# SD3's and Flux's 16-channel VAE (no quant convs); each model normalises latents with its own two numbers.
FLOW_VAE = {**SD_VAE, "latent_channels": 16, "sample_size": 1024, "use_quant_conv": False,
            "use_post_quant_conv": False}
# stabilityai/stable-diffusion-3.5-medium: MMDiT-X, a second (image-only) attention in its first 13 blocks.
SD35_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
               "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
               "caption_projection_dim": 1536, "pooled_projection_dim": 2048,  # 2048 = 768 (CLIP-L) + 1280 (bigG)
               "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"}
# black-forest-labs/FLUX.1-dev: 19 double-stream and 38 single-stream blocks, 3072 wide, a guidance embedding.
FLUX_DEV = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
FLUX_DEV_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                      "base_image_seq_len": 256, "max_image_seq_len": 4096}

TINY_CLIP = {**_CLIP, "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
             "num_hidden_layers": 2, "projection_dim": 32}
TINY_VAE = {"block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 8, "sample_size": 32}
TINY_UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "in_channels": 4, "out_channels": 4,
             "sample_size": 16, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8}
TINY_FLOW_VAE = {**TINY_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
TINY_T5 = {**T5_XXL, "vocab_size": 256, "d_model": 64, "d_ff": 64, "d_kv": 16, "num_heads": 4, "num_layers": 1,
           "relative_attention_num_buckets": 8}
# SD3 pads the two CLIPs' features (32 + 32 here) to the T5 width (64), as the real model pads 768 + 1280 to 4096.
TINY_SD3 = {"sample_size": 16, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
            "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 64, "caption_projection_dim": 32,
            "pooled_projection_dim": 64, "pos_embed_max_size": 16, "dual_attention_layers": [0], "qk_norm": "rms_norm"}
TINY_FLUX = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
             "num_attention_heads": 2, "joint_attention_dim": 64, "pooled_projection_dim": 32, "guidance_embeds": True,
             "axes_dims_rope": [4, 6, 6]}  # the rotary axes add up to the head width


@dataclass(frozen=True)
class Shape:
    """One pipeline layout: component configs as diffusers and transformers take them."""

    name: str
    family: str  # a families name: sd1 | sd2 | sdxl | sd3 | flux
    description: str
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    text_encoders: tuple[dict, ...] = ()  # CLIPs; SDXL's second and SD3's both have a projection (pooled embedding)
    scheduler: tuple[str, dict] = ("PNDMScheduler", {})
    full_size: bool = False  # hundreds of millions of parameters: slow on a CPU
    transformer: dict = field(default_factory=dict)  # SD3, Flux: the denoiser (there is no unet)
    t5: dict = field(default_factory=dict)  # SD3, Flux: the T5 encoder's config
    size: int | None = None  # pixels per side, where the denoiser's config has no sample size (Flux)
    # The dtype it runs in on a GPU instead of fp16: SD3.5 and Flux are published in bf16, and T5-XXL's
    # activations overflow fp16.
    half: str | None = None


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
    "sd35-medium": Shape(
        "sd35-medium", "sd3", "SD 3.5 Medium (MMDiT-X 2.5B, CLIP-L + bigG + T5-XXL cut to 2 layers), 1024 px, bf16",
        transformer=SD35_MEDIUM, vae={**FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        text_encoders=(CLIP_L, OPENCLIP_BIGG), t5=T5_XXL_CUT,
        scheduler=("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}), full_size=True, half="bf16",
    ),
    "flux-dev": Shape(
        "flux-dev", "flux", "Flux.1 dev (transformer 11.9B, CLIP-L + T5-XXL cut to 2 layers), 1024 px, bf16",
        transformer=FLUX_DEV, vae={**FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        text_encoders=(CLIP_L,), t5=T5_XXL_CUT, scheduler=("FlowMatchEulerDiscreteScheduler", FLUX_DEV_SCHEDULER),
        size=1024, full_size=True, half="bf16",
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
    "tiny-sd3": Shape(
        "tiny-sd3", "sd3", "SD 3.5 Medium layout, tiny (checks the harness, not speed), 32 px",
        transformer=TINY_SD3, vae={**TINY_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        text_encoders=(TINY_CLIP, TINY_CLIP), t5=TINY_T5, scheduler=("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
    ),
    "tiny-flux": Shape(
        "tiny-flux", "flux", "Flux.1 dev layout, tiny (checks the harness, not speed), 32 px",
        transformer=TINY_FLUX, vae={**TINY_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        text_encoders=(TINY_CLIP,), t5=TINY_T5, scheduler=("FlowMatchEulerDiscreteScheduler", FLUX_DEV_SCHEDULER),
        size=32,
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


def make_t5_tokenizer():
    """A T5 tokenizer (a sentencepiece-style Unigram) built here: the demo world's words, then single characters.

    The pipelines pad T5 prompts to a fixed count (256 tokens for SD3, 512 for Flux dev), which is what costs
    time; the vocabulary's size changes nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    from dreamcli.demo.world import VOCABULARY

    start = "\u2581"  # sentencepiece's word-start mark
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, start: -5.0}  # ids 0, 1, 2 as in T5
    # Scores make a whole word win over its letters, as in a trained vocabulary.
    for piece, score in ([(start + w, -1.0) for w in VOCABULARY] + [(start + c, -3.0) for c in chars]
                         + [(c, -4.0) for c in chars]):
        pieces.setdefault(piece, score)
    tok = Tokenizer(models.Unigram(list(pieces.items()), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=start, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=start, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=512)


@contextlib.contextmanager
def default_dtype(dtype):
    """Create modules in `dtype` (a flux-dev built in fp32 first would need 48 GB on the way to 24)."""
    if dtype is None:
        yield
        return
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(shape: Shape, tokenizer, device: str = "cpu", dtype=None):
    """The shape's pipeline with random weights (seed 0), created directly on `device` (fast init on a GPU).

    `dtype` (a torch dtype) creates the weights in it; None creates them in fp32. The pipeline class is the
    one the family registry names for text to image.
    """
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from dreamcli import families

    torch.manual_seed(0)
    scheduler_class, scheduler_config = shape.scheduler
    clip = [CLIPTextConfig(**config) for config in shape.text_encoders]
    with torch.device(device), default_dtype(dtype):
        if shape.transformer:
            kind = "SD3Transformer2DModel" if shape.family == "sd3" else "FluxTransformer2DModel"
            parts = {"transformer": getattr(diffusers, kind)(**shape.transformer)}
        else:
            parts = {"unet": diffusers.UNet2DConditionModel(**shape.unet)}
        parts["vae"] = diffusers.AutoencoderKL(**shape.vae)
        if shape.family == "sd3":  # CLIP-L and bigG both give pooled embeddings; T5 third
            parts["text_encoder"] = CLIPTextModelWithProjection(clip[0])
            parts["text_encoder_2"] = CLIPTextModelWithProjection(clip[1])
            parts["text_encoder_3"] = T5EncoderModel(T5Config(**shape.t5))
        elif shape.family == "flux":  # CLIP-L's pooled embedding, T5's per-token features
            parts["text_encoder"] = CLIPTextModel(clip[0])
            parts["text_encoder_2"] = T5EncoderModel(T5Config(**shape.t5))
        elif shape.family == "sdxl":
            parts["text_encoder"] = CLIPTextModel(clip[0])
            parts["text_encoder_2"] = CLIPTextModelWithProjection(clip[1])
        else:
            parts["text_encoder"] = CLIPTextModel(clip[0])
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tokenizers = {"tokenizer": tokenizer}
    if shape.family in ("sdxl", "sd3"):
        tokenizers["tokenizer_2"] = tokenizer
    if shape.family in ("sd3", "flux"):
        tokenizers["tokenizer_3" if shape.family == "sd3" else "tokenizer_2"] = make_t5_tokenizer()
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    cls = getattr(diffusers, families.get(shape.family).pipeline_class("text2img"))
    return cls(scheduler=scheduler, **parts, **tokenizers)


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
    on_gpu = device.startswith("cuda")
    # On a GPU the weights are made in the dtype at once; CPUs lack some half-precision initialisers.
    pipe = build_pipeline(SHAPES[name], make_tokenizer(partial / "tokenizer-src"), device if on_gpu else "cpu",
                          DTYPES[dtype] if on_gpu else None)
    pipe.to(dtype=DTYPES[dtype])
    pipe.save_pretrained(partial)
    shutil.rmtree(partial / "tokenizer-src")
    del pipe
    partial.rename(folder)
    return folder
