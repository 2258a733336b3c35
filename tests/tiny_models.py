"""Tiny SD1.x and SDXL pipelines from configs (random weights), saved the ways users have models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with one token per byte character and no merges (vocab.json + merges.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    # CLIP's byte-to-unicode table: printable bytes map to themselves, the rest to 256+.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    vocab_list = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_config(hidden_size: int = 32, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=600,
        max_position_embeddings=77, **extra,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8, sample_size=64,
    )


def build_sd1(tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    """SD1.x layout: one CLIP text encoder, epsilon prediction; 16x16 latents -> 32 px images."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=tokenizer,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(tokenizer: CLIPTokenizer) -> StableDiffusionXLPipeline:
    """SDXL layout: two text encoders (the second with a projection) and size conditioning."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 size/crop numbers x 8 + 32 pooled text
        cross_attention_dim=80, norm_num_groups=8,  # both encoders' hidden states side by side
    )
    return StableDiffusionXLPipeline(
        unet=unet, vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
        # Widths differ as in real SDXL (768 vs 1280): diffusers tells the encoders apart by width.
        text_encoder_2=CLIPTextModelWithProjection(_text_config(hidden_size=48, projection_dim=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading",
        ),
    )


# ---- diffusers -> original (LDM) key names, so single-file loading runs diffusers' real converter ----


def _unet_to_ldm(state: dict, config) -> dict:
    """Rename diffusers UNet keys to the original layout, derived from the block structure."""
    n_blocks, per = len(config.block_out_channels), config.layers_per_block
    table = [
        ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(n_blocks):
        for j in range(per):
            table.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * (per + 1) + j}.0."))
            table.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * (per + 1) + j}.1."))
        table.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op."))
        has_attn = "CrossAttn" in config.up_block_types[i]
        for j in range(per + 1):
            table.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (per + 1) + j}.0."))
            table.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (per + 1) + j}.1."))
        table.append(
            (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}.")
        )
    resnet_parts = [
        ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection."),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for hf, ldm in table:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
                if "resnets" in hf:
                    for hf_part, ldm_part in resnet_parts:
                        new = new.replace(hf_part, ldm_part)
                break
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict, n_blocks: int) -> dict:
    """Rename diffusers VAE keys to the original layout (decoder blocks are numbered in reverse)."""
    table = [("mid_block.attentions.0.", "mid.attn_1."), ("mid_block.resnets.0.", "mid.block_1."),
             ("mid_block.resnets.1.", "mid.block_2."), ("conv_norm_out.", "norm_out.")]
    for i in range(n_blocks):
        table.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        table.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        table.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n_blocks - 1 - i}.block."))
        table.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n_blocks - 1 - i}.upsample."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in state.items():
        new = key
        for hf, ldm in table:
            new = new.replace(hf, ldm)
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            for hf, ldm in attn:
                new = new.replace(hf, ldm)
            if value.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _openclip_to_ldm(state: dict) -> dict:
    """Rename a CLIPTextModelWithProjection to OpenCLIP names (fused q/k/v, transposed projection)."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        new = (key.replace("text_model.encoder.layers.", "transformer.resblocks.")
               .replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
               .replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")
               .replace("self_attn.out_proj", "attn.out_proj")
               .replace("text_model.final_layer_norm.", "ln_final.")
               .replace("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
               .replace("text_model.embeddings.position_embedding.weight", "positional_embedding"))
        for proj, slot in (("q_proj", 0), ("k_proj", 1), ("v_proj", 2)):
            if f"self_attn.{proj}." in new:
                prefix, kind = new.split(f".self_attn.{proj}.")
                qkv.setdefault((prefix, kind), [None] * 3)[slot] = value
                break
        else:
            out[new] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _clip_keys(state: dict) -> dict:
    """Original checkpoints name CLIP weights `text_model.*` (transformers 5 dropped that level)."""
    return {k if k.startswith("text_model.") or k == "text_projection.weight" else "text_model." + k: v
            for k, v in state.items()}


def save_single_file(pipe, path: Path) -> Path:
    """Save a pipeline as one original-layout .safetensors file, as checkpoints are shared online."""
    state = _unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    state.update(_vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
    if isinstance(pipe, StableDiffusionXLPipeline):
        state.update(_prefixed(_clip_keys(pipe.text_encoder.state_dict()), "conditioner.embedders.0.transformer."))
        state.update(
            _prefixed(_openclip_to_ldm(_clip_keys(pipe.text_encoder_2.state_dict())), "conditioner.embedders.1.model.")
        )
    else:
        state.update(_prefixed(_clip_keys(pipe.text_encoder.state_dict()), "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
