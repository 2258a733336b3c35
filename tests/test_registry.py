"""The family registry: recognising models from names alone, and what each family declares."""

import json
import pkgutil

import diffusers
import pytest

from dreamcli import families
from dreamcli.families import UNET, describe_unsupported, for_folder, for_keys, lora_kind


def keys(*names):
    return {name: [1] for name in names}


@pytest.mark.parametrize("names, family, repo", [
    (("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",), "sd1",
     "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    (("cond_stage_model.model.token_embedding.weight",), "sd2", "stabilityai/stable-diffusion-2-1"),
    (("conditioner.embedders.1.model.ln_final.weight", "conditioner.embedders.0.transformer.x"), "sdxl",
     "stabilityai/stable-diffusion-xl-base-1.0"),
    (("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",), "sd3",
     "stabilityai/stable-diffusion-3-medium-diffusers"),
    (("model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight",), "sd3",
     "stabilityai/stable-diffusion-3.5-medium"),
    (("joint_blocks.0.x_block.attn.ln_k.weight",), "sd3", "stabilityai/stable-diffusion-3.5-large"),
    (("context_embedder.weight", "pos_embed.proj.weight", "transformer_blocks.0.attn.to_q.weight"), "sd3",
     "stabilityai/stable-diffusion-3-medium-diffusers"),
    (("double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"), "flux", "black-forest-labs/FLUX.1-dev"),
    (("model.diffusion_model.double_blocks.0.img_attn.qkv.weight",), "flux", "black-forest-labs/FLUX.1-schnell"),
    (("single_transformer_blocks.0.proj_out.weight", "time_text_embed.guidance_embedder.linear_1.weight"), "flux",
     "black-forest-labs/FLUX.1-dev"),
    (("adaln_single.linear.weight", "caption_projection.linear_1.weight"), "pixart",
     "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
])
def test_single_files_are_told_apart_by_their_tensor_names(names, family, repo):
    found = for_keys(keys(*names))
    assert found is not None and found.name == family
    assert found.config_repo(keys(*names)) == repo


def test_a_lora_or_anything_else_is_no_checkpoint():
    assert for_keys(keys("lora_unet_down_blocks_0_attentions_0.lora_up.weight")) is None
    assert for_keys(keys("weight", "bias")) is None


@pytest.mark.parametrize("names, kind", [
    (("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",), "Flux.1"),  # kohya Flux: lora_unet_ too
    (("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",), "Flux.1"),
    (("lora_unet_joint_blocks_0_context_block_attn_qkv.lora_down.weight",), "SD3"),
    (("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",), UNET),
    (("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",), UNET),
    (("transformer.transformer_blocks.0.attn.to_q.lora_A.weight",), None),  # SD3 and Flux both have these
])
def test_lora_kind_from_tensor_names(names, kind):
    assert lora_kind(keys(*names)) == kind


def folder(tmp_path, index, **components):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    for name, config in components.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_folders_by_pipeline_class_and_component_configs(tmp_path):
    sd = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    assert for_folder(folder(tmp_path / "a", sd, unet={"cross_attention_dim": 768})).name == "sd1"
    assert for_folder(folder(tmp_path / "b", sd, unet={"cross_attention_dim": 1024})).name == "sd2"
    xl = {"_class_name": "StableDiffusionXLInpaintPipeline", "unet": [], "text_encoder_2": []}
    assert for_folder(folder(tmp_path / "c", xl)).name == "sdxl"
    for cls, name in (("StableDiffusion3Pipeline", "sd3"), ("FluxPipeline", "flux"),
                      ("PixArtSigmaPipeline", "pixart"), ("KandinskyV22CombinedPipeline", "kandinsky")):
        assert for_folder(folder(tmp_path / cls, {"_class_name": cls})).name == name


@pytest.mark.parametrize("cls, words", [
    ("WanPipeline", "a video pipeline (WanPipeline)"),
    ("AudioLDM2Pipeline", "an audio pipeline"),
    ("ControlNetModel", "a ControlNet (ControlNetModel), not a base model"),
    ("FluxTransformer2DModel", "one model component (FluxTransformer2DModel)"),
    ("HunyuanDiTPipeline", "a HunyuanDiTPipeline"),
])
def test_unsupported_models_are_named(tmp_path, cls, words):
    with pytest.raises(families.UnsupportedModel) as caught:
        for_folder(folder(tmp_path, {"_class_name": cls}))
    message = str(caught.value)
    assert words in message and "dream runs SD 1.x, SD 2.x, SDXL, SD3, Flux.1, PixArt-Σ and Kandinsky 2.2" in message
    assert describe_unsupported(None, "x").startswith("x is no model_index.json dream can read")


def test_every_family_module_is_registered_and_names_real_diffusers_classes():
    modules = {m.name for m in pkgutil.iter_modules(families.__path__)} - {"common"}
    assert modules == {"sd1", "sd2", "sdxl", "sd3", "flux", "pixart", "kandinsky"}
    assert set(families.DISPLAY_ORDER) == set(families.BY_NAME) == {f.name for f in families.FAMILIES}
    for family in families.FAMILIES:
        assert "text2img" in family.pipelines
        for task, cls in family.pipelines.items():
            assert task in families.TASKS and hasattr(diffusers, cls), (family.name, cls)
        assert hasattr(diffusers, family.denoiser_class)
        assert family.config_repos[""]


def test_a_missing_task_names_the_family_and_the_commands():
    with pytest.raises(families.UnsupportedModel) as caught:
        families.get("pixart").pipeline_class("inpaint")
    assert str(caught.value) == (
        "PixArt-Σ models have no inpaint pipeline in diffusers, so dream's inpaint and outpaint cannot run on "
        "them: use a model of SD 1.x, SD 2.x, SDXL, SD3, Flux.1 or Kandinsky 2.2"
    )
