"""The tiny SD3, Flux, PixArt-Sigma and Kandinsky 2.2 builders give models that load and draw as the real ones do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tiny_families as tf

PROMPT = "a red circle, on a blue (square) #3!"


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return tf.build_all(tmp_path_factory.mktemp("families"))


def draw(pipe, width=32, height=32, seed=0, **kwargs) -> np.ndarray:
    """Two steps at a size; the picture as a user sees it (uint8 pixels, rows x columns)."""
    generator = torch.Generator().manual_seed(seed)
    image = pipe(PROMPT, num_inference_steps=2, width=width, height=height, generator=generator, **kwargs).images[0]
    return np.asarray(image, dtype=np.int16)


EXTRA_ARGS = {
    "pixart-sigma": {"use_resolution_binning": False, "clean_caption": False},
    "kandinsky22": {"prior_num_inference_steps": 2},
}


def load(fam, name):
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(fam[name])


# ---------------------------------------------------------------- what build_all makes


def test_every_path_exists_and_stays_small(fam):
    sizes = {}
    for name, path in fam.items():
        path = Path(path)
        assert path.exists(), name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        sizes[name] = sum(p.stat().st_size for p in files)
    assert max(sizes.values()) < 3_000_000, sizes
    assert sum(sizes.values()) < 20_000_000, sizes


def test_t5_tokenizer_reads_any_ascii_prompt(fam):
    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(fam["t5-tokenizer"])
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT + " ~`{}|\\^_@<>").input_ids
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT + " ~`{}|\\^_@<>"
    padded = tok("hi", padding="max_length", max_length=8).input_ids
    assert padded[3:] == [0] * 5
    assert tok("é").input_ids == [tok.convert_tokens_to_ids("▁"), 2, 1]  # outside ASCII: <unk>, as real T5 does


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "flux-schnell", "pixart-sigma", "kandinsky22"])
def test_each_family_draws_the_requested_size(fam, name):
    pipe = load(fam, name)
    assert type(pipe).__name__ == {
        "sd3": "StableDiffusion3Pipeline", "flux-dev": "FluxPipeline", "flux-schnell": "FluxPipeline",
        "pixart-sigma": "PixArtSigmaPipeline", "kandinsky22": "KandinskyV22CombinedPipeline",
    }[name]
    wide = (64, 32) if name == "kandinsky22" else (48, 32)
    for width, height in ((32, 32), wide):
        image = draw(pipe, width, height, **EXTRA_ARGS.get(name, {}))
        assert image.shape == (height, width, 3)
        assert image.std() > 5  # a picture, not a flat colour


def test_pixart_refuses_its_default_resolution_binning(fam):
    pipe = load(fam, "pixart-sigma")
    with pytest.raises(ValueError, match="Invalid sample size"):
        draw(pipe)


def test_flux_dev_reads_guidance_and_schnell_has_none(fam):
    dev, schnell = load(fam, "flux-dev"), load(fam, "flux-schnell")
    assert dev.transformer.config.guidance_embeds and not schnell.transformer.config.guidance_embeds
    assert dev.scheduler.config.use_dynamic_shifting and not schnell.scheduler.config.use_dynamic_shifting
    assert schnell.scheduler.config.shift == 1.0
    assert np.abs(draw(dev, guidance_scale=1.0) - draw(dev, guidance_scale=8.0)).max() > 0
    assert np.array_equal(draw(schnell, guidance_scale=1.0), draw(schnell, guidance_scale=8.0))


def test_flux_floors_sizes_to_multiples_of_4(fam):
    assert draw(load(fam, "flux-schnell"), 34, 32).shape == (32, 32, 3)  # a warning, not an error


# ---------------------------------------------------------------- SD3 single files


def test_sd3_file_has_the_stability_layout(fam):
    keys = set(load_file(fam["sd3-file"]))
    for key in ("model.diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.bias",
                "model.diffusion_model.x_embedder.proj.weight", "first_stage_model.decoder.conv_out.weight",
                "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight",
                "text_encoders.clip_g.transformer.text_projection.weight",
                "text_encoders.t5xxl.transformer.shared.weight"):
        assert key in keys
    assert all(k.startswith("model.diffusion_model.") for k in load_file(fam["sd3-transformer-file"]))


def test_sd3_file_gives_the_folder_image(fam):
    from diffusers import StableDiffusion3Pipeline

    folder = StableDiffusion3Pipeline.from_pretrained(fam["sd3"])
    single = StableDiffusion3Pipeline.from_single_file(fam["sd3-file"], config=fam["sd3"])
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        ours, theirs = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # diffusers 0.42.1 leaves the single-file T5 in training mode (dropout on): images would not repeat.
    assert single.text_encoder_3.training
    single.text_encoder_3.eval()
    assert np.array_equal(draw(folder), draw(single))


def test_sd3_transformer_file_loads_with_the_folder_encoders_and_vae_passed(fam):
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    folder = Path(fam["sd3"])
    # The folder's text encoders are transformers weights (model.safetensors), which diffusers' single-file
    # loader does not look for, so it asks for them to be passed in.
    with pytest.raises(SingleFileComponentError, match="text_encoder = CLIPTextModelWithProjection"):
        StableDiffusion3Pipeline.from_single_file(fam["sd3-transformer-file"], config=str(folder))
    parts = {
        "text_encoder": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        "text_encoder_3": T5EncoderModel.from_pretrained(folder / "text_encoder_3"),
    }
    with pytest.raises(SingleFileComponentError, match="vae = AutoencoderKL"):
        StableDiffusion3Pipeline.from_single_file(fam["sd3-transformer-file"], config=str(folder), **parts)
    parts["vae"] = AutoencoderKL.from_pretrained(folder / "vae")
    single = StableDiffusion3Pipeline.from_single_file(fam["sd3-transformer-file"], config=str(folder), **parts)
    reference = draw(StableDiffusion3Pipeline.from_pretrained(folder))
    assert np.array_equal(draw(single), reference)
    # The other way: convert the transformer alone, take everything else from the folder.
    transformer = SD3Transformer2DModel.from_single_file(
        fam["sd3-transformer-file"], config=str(folder), subfolder="transformer"
    )
    assert np.array_equal(draw(StableDiffusion3Pipeline.from_pretrained(folder, transformer=transformer)), reference)


def test_diffusers_does_not_recognise_a_tiny_sd3_file(fam):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    # It checks the real width (adaLN bias of 9216); dreamcli must tell SD3 by its key names.
    assert infer_diffusers_model_type(load_file(fam["sd3-file"])) == "v1"
    assert infer_diffusers_model_type(load_file(fam["flux-bfl-file"])) == "flux-dev"


# ---------------------------------------------------------------- Flux single files


def test_flux_transformer_file_loads_without_conversion(fam):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    assert "transformer_blocks.0.attn.to_q.weight" in load_file(fam["flux-transformer-file"])
    transformer = FluxTransformer2DModel.from_single_file(
        fam["flux-transformer-file"], config=fam["flux-dev"], subfolder="transformer"
    )
    folder = FluxPipeline.from_pretrained(fam["flux-dev"])
    assert np.array_equal(draw(folder), draw(FluxPipeline.from_pretrained(fam["flux-dev"], transformer=transformer)))


def test_flux_bfl_file_uses_the_names_diffusers_converts(fam):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    ours = load_file(Path(fam["flux-transformer-file"]))
    bfl = load_file(fam["flux-bfl-file"])
    assert {"img_in.weight", "time_in.in_layer.weight", "guidance_in.in_layer.weight",
            "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
            "final_layer.adaLN_modulation.1.weight"} <= bfl.keys()
    # Our split of the fused single-block matrix, at the tiny width...
    q, k, v, mlp = torch.split(bfl["single_blocks.0.linear1.weight"], [32, 32, 32, 128])
    assert torch.equal(q, ours["single_transformer_blocks.0.attn.to_q.weight"])
    assert torch.equal(mlp, ours["single_transformer_blocks.0.proj_mlp.weight"])
    # ...and every other name through diffusers' own converter, with linear1 stubbed at the width it assumes.
    for kind, shape in (("weight", (21504, 32)), ("bias", (21504,))):
        bfl[f"single_blocks.0.linear1.{kind}"] = torch.zeros(shape)
    converted = convert_flux_transformer_checkpoint_to_diffusers(bfl)
    assert bfl == {}  # every key consumed
    assert converted.keys() == ours.keys()
    fused = ("single_transformer_blocks.0.attn.to_", "single_transformer_blocks.0.proj_mlp")
    assert all(torch.equal(converted[k], ours[k]) for k in ours if not k.startswith(fused))


def test_flux_bfl_file_does_not_load_on_a_tiny_model(fam):
    from diffusers import FluxTransformer2DModel

    # convert_flux_transformer_checkpoint_to_diffusers hardcodes inner_dim = 3072 for the fused single blocks.
    with pytest.raises(RuntimeError, match=r"split_sizes=\[3072, 3072, 3072, 12288\]"):
        FluxTransformer2DModel.from_single_file(fam["flux-bfl-file"], config=fam["flux-dev"], subfolder="transformer")


# ---------------------------------------------------------------- Kandinsky 2.2


def test_kandinsky_from_pipe_image_tasks(fam):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    pipe = load(fam, "kandinsky22")
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    assert type(img2img).__name__ == "KandinskyV22Img2ImgCombinedPipeline"
    start = Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 64, 3), dtype=np.uint8))
    out = img2img(PROMPT, image=start, strength=0.5, num_inference_steps=4, prior_num_inference_steps=2,
                  width=64, height=32, generator=torch.Generator().manual_seed(0)).images[0]
    # diffusers 0.42.1 passes (width, height) to preprocess(image, height, width): non-square comes out turned...
    assert out.size == (32, 64)
    out = img2img(PROMPT, image=start, strength=0.5, num_inference_steps=4, prior_num_inference_steps=2,
                  width=32, height=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 32)  # ...so swapping them gives the size asked for
    inpaint = AutoPipelineForInpainting.from_pipe(pipe)
    assert type(inpaint).__name__ == "KandinskyV22InpaintCombinedPipeline"
    mask = Image.new("L", (64, 32), 0)
    with pytest.raises(RuntimeError, match="to have 4 channels, but got 9 channels"):  # needs the inpaint UNet
        inpaint(PROMPT, image=start, mask_image=mask, num_inference_steps=2, prior_num_inference_steps=2,
                width=64, height=32)


def test_kandinsky_inpaint_model_fills_at_the_requested_size(fam):
    from diffusers import AutoPipelineForInpainting

    pipe = AutoPipelineForInpainting.from_pretrained(fam["kandinsky22-inpaint"])
    assert type(pipe).__name__ == "KandinskyV22InpaintCombinedPipeline"
    start = Image.new("RGB", (64, 32), (200, 30, 30))
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (16, 8, 48, 24))
    out = pipe(PROMPT, image=start, mask_image=mask, num_inference_steps=2, prior_num_inference_steps=2,
               width=64, height=32).images[0]
    assert out.size == (64, 32)


def test_kandinsky_decoder_folders(fam):
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    assert type(DiffusionPipeline.from_pretrained(fam["kandinsky22-decoder"])).__name__ == "KandinskyV22Pipeline"
    with pytest.raises(ValueError, match="expected .*prior_prior.* but only"):
        AutoPipelineForText2Image.from_pretrained(fam["kandinsky22-decoder"])
    linked = AutoPipelineForText2Image.from_pretrained(fam["kandinsky22-decoder-linked"])
    assert type(linked).__name__ == "KandinskyV22CombinedPipeline"
    assert draw(linked, 64, 32, prior_num_inference_steps=2).shape == (32, 64, 3)


# ---------------------------------------------------------------- LoRAs


@pytest.mark.parametrize("model,lora", [("sd3", "sd3-lora"), ("flux-dev", "flux-lora"),
                                        ("flux-dev", "flux-kohya-lora-double")])
def test_lora_files_change_the_picture(fam, model, lora):
    pipe = load(fam, model)
    before = draw(pipe)
    pipe.load_lora_weights(fam[lora], adapter_name="tiny")
    assert np.abs(draw(pipe) - before).mean() > 2
    pipe.set_adapters(["tiny"], [0.0])
    assert np.abs(draw(pipe) - before).max() <= 1


def test_kohya_flux_lora_with_single_blocks_fails_on_a_tiny_model(fam):
    keys = load_file(fam["flux-kohya-lora"])
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in keys
    assert "lora_unet_double_blocks_0_img_attn_qkv.alpha" in keys
    pipe = load(fam, "flux-dev")
    # _convert_kohya_flux_lora_to_diffusers splits linear1 as [3072, 3072, 3072, 12288] behind a bare assert.
    with pytest.raises(AssertionError) as caught:
        pipe.load_lora_weights(fam["flux-kohya-lora"])
    assert str(caught.value) == ""


@pytest.mark.parametrize("model,lora,part", [("pixart-sigma", "pixart-lora", "transformer"),
                                             ("kandinsky22", "kandinsky-lora", "unet")])
def test_peft_adapter_folders_change_the_picture(fam, model, lora, part):
    from peft import PeftModel

    assert {p.name for p in Path(fam[lora]).iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert all(k.startswith("base_model.model.") for k in load_file(Path(fam[lora]) / "adapter_model.safetensors"))
    pipe = load(fam, model)
    before = draw(pipe, **EXTRA_ARGS.get(model, {}))
    PeftModel.from_pretrained(getattr(pipe, part), fam[lora])  # injects the LoRA layers into the model in place
    assert np.abs(draw(pipe, **EXTRA_ARGS.get(model, {})) - before).mean() > 2
