"""Tiny SD3, Flux, PixArt-Sigma and Kandinsky 2.2 models (random weights), with single files and LoRAs."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    KandinskyV22CombinedPipeline,
    KandinskyV22InpaintCombinedPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PriorTransformer,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

import tiny_models as tm

# Widths. SD3 pads the two CLIP widths side by side (32 + 48) up to the T5 width, as the real model
# pads 768 + 1280 to 4096, so T5 must be the widest; each model's width is then read from these.
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 48, 96
LORA_RANK = 4
LORA_STD = 0.5  # rank 4 at this scale moves a 32-wide layer visibly: mean pixel change 4-60 levels
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


# ---------------------------------------------------------------- text encoders and tokenizers


def write_t5_tokenizer(folder: Path) -> T5TokenizerFast:
    """A T5 Unigram tokenizer built offline: one piece per printable ASCII character, with and without `▁`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in real T5
    chars = [c for c in string.printable if not c.isspace()]
    # Scores make a word-initial piece (`▁a`) win over `▁` + `a`, as real sentencepiece vocabularies do.
    vocab = [(s, 0.0) for s in specials] + [("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
        model_max_length=512,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def t5_encoder(seed: int = 10) -> T5EncoderModel:
    """A one-layer T5 encoder as wide as T5_WIDTH."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=256, d_model=T5_WIDTH, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        is_encoder_decoder=False, use_cache=False,
    )
    return T5EncoderModel(config)


def _clip_config(hidden_size: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=600,
        max_position_embeddings=77, **extra,
    )


def _sd3_clip_l() -> CLIPTextModelWithProjection:
    """SD3's CLIP-L: its projection is the identity (diffusers' single-file loader writes exactly that)."""
    model = CLIPTextModelWithProjection(_clip_config(CLIP_L_WIDTH, projection_dim=CLIP_L_WIDTH))
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(CLIP_L_WIDTH))
    return model


def _flow_vae(shift_factor: float, scaling_factor: float) -> AutoencoderKL:
    """A 16-channel VAE without quant convs, as SD3's and Flux's; 2 blocks = 2x downscale."""
    return AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=8, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=shift_factor, scaling_factor=scaling_factor,
    )


# ---------------------------------------------------------------- pipelines


def build_sd3(clip_tokenizer, t5_tokenizer) -> StableDiffusion3Pipeline:
    """SD3 (medium layout): CLIP-L + CLIP-G + T5, an MMDiT of 2 joint blocks; 32 px by default, any multiple of 4."""
    torch.manual_seed(3)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH, pos_embed_max_size=16,  # up to 64 px
    )
    text_encoder = _sd3_clip_l()
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(CLIP_G_WIDTH, projection_dim=CLIP_G_WIDTH))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),  # SD3's own VAE numbers
        text_encoder=text_encoder, tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer,
        text_encoder_3=t5_encoder(), tokenizer_3=t5_tokenizer,
    )


def build_flux(clip_tokenizer, t5_tokenizer, dev: bool = True) -> FluxPipeline:
    """Flux dev (guidance embedding, dynamic shift) or schnell; sizes must be multiples of 4 (2x VAE, 2x2 packing)."""
    torch.manual_seed(4 if dev else 5)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L_WIDTH,
        guidance_embeds=dev, axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    if dev:  # black-forest-labs/FLUX.1-dev's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_flow_vae(shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(_clip_config(CLIP_L_WIDTH)), tokenizer=clip_tokenizer,
        text_encoder_2=t5_encoder(), tokenizer_2=t5_tokenizer,
    )


def build_pixart_sigma(t5_tokenizer) -> PixArtSigmaPipeline:
    """PixArt-Sigma: T5 + a DiT with learned sigma; 32 px by default. Call it with use_resolution_binning=False."""
    torch.manual_seed(6)
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=4,
        caption_channels=T5_WIDTH, in_channels=4, cross_attention_dim=32, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, interpolation_scale=1,
        norm_num_groups=8,
    )
    return PixArtSigmaPipeline(
        transformer=transformer, vae=tm._vae(), text_encoder=t5_encoder(), tokenizer=t5_tokenizer,
        # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS ships a DPM-Solver++ scheduler.
        scheduler=DPMSolverMultistepScheduler(
            beta_schedule="linear", beta_start=0.0001, beta_end=0.02, algorithm_type="dpmsolver++",
            solver_order=2, prediction_type="epsilon", lower_order_final=True,
        ),
    )


def build_kandinsky22(clip_tokenizer) -> KandinskyV22CombinedPipeline:
    """Kandinsky 2.2 prior + decoder in one pipeline; 2x MoVQ, so 32 px needs 16x16 latents."""
    from transformers import CLIPImageProcessor

    torch.manual_seed(7)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=32, num_layers=1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
        image_size=32, patch_size=8, num_channels=3,
    ))
    text_encoder = CLIPTextModelWithProjection(_clip_config(32, projection_dim=32))
    image_processor = CLIPImageProcessor(
        crop_size=32, size=32, do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    prior_scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000, clip_sample=True,
        clip_sample_range=10.0,
    )
    unet, movq, scheduler = _kandinsky_decoder_parts()
    return KandinskyV22CombinedPipeline(
        unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior, prior_image_encoder=image_encoder,
        prior_text_encoder=text_encoder, prior_tokenizer=clip_tokenizer, prior_scheduler=prior_scheduler,
        prior_image_processor=image_processor,
    )


def build_kandinsky22_inpaint(clip_tokenizer) -> KandinskyV22InpaintCombinedPipeline:
    """Kandinsky 2.2 inpainting (kandinsky-2-2-decoder-inpaint): the decoder UNet also reads mask + masked latents."""
    base = build_kandinsky22(clip_tokenizer)
    unet, _, _ = _kandinsky_decoder_parts(in_channels=9, seed=9)
    return KandinskyV22InpaintCombinedPipeline(**{**base.components, "unet": unet})


def _kandinsky_decoder_parts(in_channels: int = 4, seed: int = 8):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=8,  # learned variance, split off by the pipeline
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, attention_head_dim=4, cross_attention_dim=32, resnet_time_scale_shift="scale_shift",
        # Kandinsky 2.2: the image embedding from the prior is both the cross-attention context and an added embedding.
        encoder_hid_dim=32, encoder_hid_dim_type="image_proj", addition_embed_type="image", class_embed_type=None,
    )
    movq = VQModel(  # spatial norm hardcodes 32 groups, so no block narrower than 32
        block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], in_channels=3, out_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    scheduler = DDPMScheduler(  # kandinsky-community/kandinsky-2-2-decoder's scheduler config
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, num_train_timesteps=1000,
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", thresholding=False,
    )
    return unet, movq, scheduler


def link_kandinsky_prior(decoder_folder: Path, prior_ref: str) -> None:
    """Write the model card that kandinsky-community/kandinsky-2-2-decoder has: `prior:` names the prior pipeline.

    diffusers' combined pipelines (`_load_connected_pipes`) read it in `_update_init_kwargs_with_connected_pipeline`
    and load the prior from that repo id or folder.
    """
    (Path(decoder_folder) / "README.md").write_text(f"---\nprior:\n- {prior_ref}\n---\n# tiny Kandinsky 2.2 decoder\n")


# ---------------------------------------------------------------- original (non-diffusers) layouts


def _cat(state: dict, keys: list[str]) -> torch.Tensor:
    return torch.cat([state.pop(k) for k in keys])


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """Original AdaLayerNormContinuous is (shift, scale); diffusers' is (scale, shift). Its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def sd3_transformer_to_original(state: dict, num_layers: int) -> dict:
    """Rename an SD3Transformer2DModel state dict to Stability AI's MMDiT names (fused q/k/v, joint_blocks)."""
    state = dict(state)
    out = {"pos_embed": state.pop("pos_embed.pos_embed")}
    renames = {
        "pos_embed.proj.": "x_embedder.proj.", "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.", "context_embedder.": "context_embedder.",
        "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
        "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.", "proj_out.": "final_layer.linear.",
    }
    for i in range(num_layers):
        last = i == num_layers - 1  # the last context block only feeds attention: no output proj, no MLP
        b, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{kind}"] = _cat(state, [f"{b}attn.to_{p}.{kind}" for p in "qkv"])
            out[f"{j}context_block.attn.qkv.{kind}"] = _cat(state, [f"{b}attn.add_{p}_proj.{kind}" for p in "qkv"])
            ctx_mod = state.pop(f"{b}norm1_context.linear.{kind}")
            out[f"{j}context_block.adaLN_modulation.1.{kind}"] = _swap_halves(ctx_mod) if last else ctx_mod
        renames.update({
            f"{b}attn.to_out.0.": f"{j}x_block.attn.proj.", f"{b}norm1.linear.": f"{j}x_block.adaLN_modulation.1.",
            f"{b}ff.net.0.proj.": f"{j}x_block.mlp.fc1.", f"{b}ff.net.2.": f"{j}x_block.mlp.fc2.",
        })
        if not last:
            renames.update({
                f"{b}attn.to_add_out.": f"{j}context_block.attn.proj.",
                f"{b}ff_context.net.0.proj.": f"{j}context_block.mlp.fc1.",
                f"{b}ff_context.net.2.": f"{j}context_block.mlp.fc2.",
            })
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    out.update(_rename_all(state, renames))
    return out


def flux_transformer_to_bfl(state: dict, num_layers: int, num_single_layers: int) -> dict:
    """Rename a FluxTransformer2DModel state dict to Black Forest Labs' names (flux1-dev.safetensors layout)."""
    state = dict(state)
    out = {}
    renames = {
        "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
        "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
        "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
        "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
        "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
        "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
        "context_embedder.": "txt_in.", "x_embedder.": "img_in.", "proj_out.": "final_layer.linear.",
    }
    for i in range(num_layers):
        b, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{d}img_attn.qkv.{kind}"] = _cat(state, [f"{b}attn.to_{p}.{kind}" for p in "qkv"])
            out[f"{d}txt_attn.qkv.{kind}"] = _cat(state, [f"{b}attn.add_{p}_proj.{kind}" for p in "qkv"])
        renames.update({
            f"{b}norm1.linear.": f"{d}img_mod.lin.", f"{b}norm1_context.linear.": f"{d}txt_mod.lin.",
            f"{b}attn.norm_q.weight": f"{d}img_attn.norm.query_norm.scale",
            f"{b}attn.norm_k.weight": f"{d}img_attn.norm.key_norm.scale",
            f"{b}attn.norm_added_q.weight": f"{d}txt_attn.norm.query_norm.scale",
            f"{b}attn.norm_added_k.weight": f"{d}txt_attn.norm.key_norm.scale",
            f"{b}ff.net.0.proj.": f"{d}img_mlp.0.", f"{b}ff.net.2.": f"{d}img_mlp.2.",
            f"{b}ff_context.net.0.proj.": f"{d}txt_mlp.0.", f"{b}ff_context.net.2.": f"{d}txt_mlp.2.",
            f"{b}attn.to_out.0.": f"{d}img_attn.proj.", f"{b}attn.to_add_out.": f"{d}txt_attn.proj.",
        })
    for i in range(num_single_layers):
        b, s = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):  # q, k, v and the MLP input share one matrix
            out[f"{s}linear1.{kind}"] = _cat(state, [f"{b}attn.to_{p}.{kind}" for p in "qkv"] + [f"{b}proj_mlp.{kind}"])
        renames.update({
            f"{b}norm.linear.": f"{s}modulation.lin.", f"{b}attn.norm_q.weight": f"{s}norm.query_norm.scale",
            f"{b}attn.norm_k.weight": f"{s}norm.key_norm.scale", f"{b}proj_out.": f"{s}linear2.",
        })
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    out.update(_rename_all(state, renames))
    return out


def _rename_all(state: dict, renames: dict) -> dict:
    """Apply prefix renames; every key must be covered, so a missed weight fails here, not at load time."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no original name for {key}")
        out[renames[prefix] + key[len(prefix):]] = value
    return out


def save_sd3_single_file(pipe: StableDiffusion3Pipeline, path: Path, with_encoders_and_vae: bool = True) -> Path:
    """Write an SD3 checkpoint as Stability AI ships it (sd3_medium_incl_clips_t5xxlfp16.safetensors layout)."""
    state = {
        "model.diffusion_model." + k: v
        for k, v in sd3_transformer_to_original(
            pipe.transformer.state_dict(), pipe.transformer.config.num_layers
        ).items()
    }
    if with_encoders_and_vae:
        state.update(tm._vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
        # CLIP-L's projection is not stored: diffusers fills in the identity, as for the real file.
        clip_l = {k: v for k, v in tm._clip_keys(pipe.text_encoder.state_dict()).items() if "text_projection" not in k}
        state.update(tm._prefixed(clip_l, "text_encoders.clip_l.transformer."))
        state.update(tm._prefixed(tm._clip_keys(pipe.text_encoder_2.state_dict()), "text_encoders.clip_g.transformer."))
        state.update(tm._prefixed(pipe.text_encoder_3.state_dict(), "text_encoders.t5xxl.transformer."))
    _save(state, path)
    return path


def _save(state: dict, path: Path, metadata: dict | None = None) -> None:
    # clone(): tied weights (T5's shared/embed_tokens) share storage, which safetensors refuses.
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path), metadata=metadata)


# ---------------------------------------------------------------- LoRAs


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS)


def _randomize_lora(model, seed: int, std: float) -> None:
    """Fill A and B with noise: a trained LoRA has B != 0 (peft starts it at 0), so the picture changes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=g) * std)


def _adapter_state(model, seed: int, std: float) -> dict:
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(model)
    model.add_adapter(_lora_config())
    _randomize_lora(model, seed, std)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_sd3_lora(pipe: StableDiffusion3Pipeline, folder: Path) -> Path:
    """A diffusers-format SD3 LoRA (`transformer.*.lora_A/B.weight`) as `save_lora_weights` writes it."""
    state = _adapter_state(pipe.transformer, 30, LORA_STD)
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=state)
    return folder / "pytorch_lora_weights.safetensors"


def save_flux_lora(pipe: FluxPipeline, folder: Path) -> Path:
    """A diffusers-format Flux LoRA as `FluxPipeline.save_lora_weights` writes it."""
    state = _adapter_state(pipe.transformer, 40, LORA_STD)
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=state)
    return folder / "pytorch_lora_weights.safetensors"


def save_flux_kohya_lora(pipe: FluxPipeline, path: Path, single_blocks: bool = True) -> Path:
    """A Flux LoRA in kohya sd-scripts naming (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, alpha).

    With single_blocks the fused `single_blocks_N_linear1` (q, k, v and MLP in one matrix) is included, as in
    LoRAs shared on civitai; diffusers splits it with the real model's widths, so it cannot load on a tiny model.
    """
    config = pipe.transformer.config
    inner = config.num_attention_heads * config.attention_head_dim
    mlp = inner * 4
    g = torch.Generator().manual_seed(41)
    shapes = {}  # kohya module name -> (in_features, out_features)
    for i in range(config.num_layers):
        for stream in ("img", "txt"):
            shapes[f"double_blocks_{i}_{stream}_attn_qkv"] = (inner, 3 * inner)
            shapes[f"double_blocks_{i}_{stream}_attn_proj"] = (inner, inner)
    if single_blocks:
        for i in range(config.num_single_layers):
            shapes[f"single_blocks_{i}_linear1"] = (inner, 3 * inner + mlp)
            shapes[f"single_blocks_{i}_linear2"] = (inner + mlp, inner)
    state = {}
    for name, (n_in, n_out) in shapes.items():
        key = "lora_unet_" + name
        state[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, n_in, generator=g) * LORA_STD
        state[f"{key}.lora_up.weight"] = torch.randn(n_out, LORA_RANK, generator=g) * LORA_STD
        state[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    _save(state, path, metadata={"ss_network_module": "networks.lora_flux", "ss_base_model_version": "flux1"})
    return path


def save_peft_adapter(model, folder: Path, seed: int) -> Path:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors, keys `base_model.model.*`).

    This is what `get_peft_model(model, config).save_pretrained(folder)` writes, as diffusers' PixArt LoRA
    training script does; load it with `peft.PeftModel.from_pretrained(model, folder)`.
    """
    from peft import get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), _lora_config())
    _randomize_lora(peft_model, seed, LORA_STD)
    peft_model.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------- everything


def build_all(root: Path) -> dict[str, str]:
    """Build every tiny model, file and LoRA of the four families into root; returns name -> path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"clip-tokenizer": root / "clip-tokenizer", "t5-tokenizer": root / "t5-tokenizer"}
    clip_tok = tm.write_tokenizer(paths["clip-tokenizer"])
    t5_tok = write_t5_tokenizer(paths["t5-tokenizer"])

    def save(name: str, pipe) -> None:
        pipe.save_pretrained(root / name)
        paths[name] = root / name

    sd3 = build_sd3(clip_tok, t5_tok)
    save("sd3", sd3)
    paths["sd3-file"] = save_sd3_single_file(sd3, root / "sd3.safetensors")
    paths["sd3-transformer-file"] = save_sd3_single_file(
        sd3, root / "sd3-transformer.safetensors", with_encoders_and_vae=False
    )
    paths["sd3-lora"] = save_sd3_lora(sd3, root / "sd3-lora")

    flux = build_flux(clip_tok, t5_tok, dev=True)
    save("flux-dev", flux)
    save("flux-schnell", build_flux(clip_tok, t5_tok, dev=False))
    transformer, cfg = flux.transformer, flux.transformer.config
    paths["flux-transformer-file"] = root / "flux-dev-transformer.safetensors"
    _save(transformer.state_dict(), paths["flux-transformer-file"])
    paths["flux-bfl-file"] = root / "flux-dev-bfl.safetensors"
    _save(flux_transformer_to_bfl(transformer.state_dict(), cfg.num_layers, cfg.num_single_layers),
          paths["flux-bfl-file"])
    paths["flux-lora"] = save_flux_lora(flux, root / "flux-lora")
    paths["flux-kohya-lora"] = save_flux_kohya_lora(flux, root / "flux-kohya-lora.safetensors")
    paths["flux-kohya-lora-double"] = save_flux_kohya_lora(
        flux, root / "flux-kohya-lora-double.safetensors", single_blocks=False
    )

    pixart = build_pixart_sigma(t5_tok)
    save("pixart-sigma", pixart)
    paths["pixart-lora"] = save_peft_adapter(pixart.transformer, root / "pixart-lora", seed=60)

    kandinsky = build_kandinsky22(clip_tok)
    save("kandinsky22", kandinsky)
    save("kandinsky22-decoder", kandinsky.decoder_pipe)
    # The Hub layout: kandinsky-2-2-decoder names its prior in README.md, and diffusers follows that link.
    save("kandinsky22-prior", kandinsky.prior_pipe)
    save("kandinsky22-decoder-linked", kandinsky.decoder_pipe)
    link_kandinsky_prior(paths["kandinsky22-decoder-linked"], str(paths["kandinsky22-prior"]))
    save("kandinsky22-inpaint", build_kandinsky22_inpaint(clip_tok))
    paths["kandinsky-lora"] = save_peft_adapter(kandinsky.unet, root / "kandinsky-lora", seed=70)
    return {k: str(v) for k, v in paths.items()}


def save_gguf(state: dict, path: Path) -> Path:
    """A transformer state dict as a GGUF file, as quantised Flux files are shared: 2-D weights whose rows
    split into 32-value blocks in Q8_0, the rest in F32 (diffusers keeps those unquantised)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, tensor in state.items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[-1] % 32 == 0:
            packed = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
