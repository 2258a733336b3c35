"""Small pieces with values a user would see: parsing, names, metadata text, family detection."""

from __future__ import annotations

import pytest

from dreamcli.checkpoints import detect_family
from dreamcli.errors import InputError
from dreamcli.io.metadata import a1111_parameters, parse_a1111_parameters
from dreamcli.io.outputs import output_name, slugify
from dreamcli.requests import LoraRef, check_size


@pytest.mark.parametrize(
    "text, path, scale",
    [
        ("style.safetensors", "style.safetensors", 1.0),
        ("style.safetensors:0.6", "style.safetensors", 0.6),
        ("C:\\loras\\style.safetensors", "C:\\loras\\style.safetensors", 1.0),
        ("C:\\loras\\style.safetensors:-.5", "C:\\loras\\style.safetensors", -0.5),
        ("org/repo", "org/repo", 1.0),
    ],
)
def test_lora_ref_parse(text, path, scale):
    assert LoraRef.parse(text) == LoraRef(path, scale)


def test_slug_and_output_name():
    assert slugify("A Red Circle, on a *blue* background!") == "a-red-circle-on-a-blue-background"
    assert slugify("日本語") == "prompt"
    assert len(slugify("word " * 40)) <= 48
    assert output_name(7, 123, "a cat", "png") == "00007-123-a-cat.png"


def test_size_messages_name_the_nearest_valid_sizes():
    check_size("width", 512)
    with pytest.raises(InputError, match="width 515 is not a multiple of 8: use 512 or 520"):
        check_size("width", 515)
    with pytest.raises(InputError, match="at least 8"):
        check_size("height", 0)


def test_a1111_text_round_trip():
    record = {
        "request": {"prompt": "a cat, (best quality)", "negative_prompt": "blurry, dog",
                    "num_inference_steps": 20, "guidance_scale": 7.0, "model": {"loras": ["x.safetensors:0.5"]}},
        "seed": 42, "width": 512, "height": 768, "sampler": "DPM++ 2M Karras", "model_hash": "abcdef0123",
        "model_name": "dreamshaper", "versions": {"dreamcli": "0.1.0"},
    }
    text = a1111_parameters(record)
    assert text.splitlines()[0] == "a cat, (best quality)"
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == "a cat, (best quality)"
    assert parsed["negative_prompt"] == "blurry, dog"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"]) == ("20", "DPM++ 2M Karras", "7")
    assert (parsed["Seed"], parsed["Size"]) == ("42", "512x768")
    assert (parsed["Model hash"], parsed["Loras"]) == ("abcdef0123", "x.safetensors:0.5")


def test_family_from_checkpoint_key_names():
    assert detect_family({"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": []}) == "sd1"
    assert detect_family({"cond_stage_model.model.token_embedding.weight": []}) == "sd2"
    assert detect_family({"conditioner.embedders.1.model.positional_embedding": [],
                          "conditioner.embedders.0.transformer.text_model.x": []}) == "sdxl"
    assert detect_family({"lora_unet_down_blocks_0.lora_up.weight": []}) is None


def test_model_flag_naming_a_preset_uses_the_preset(monkeypatch, tmp_path):
    from dreamcli.config import merge_settings

    monkeypatch.chdir(tmp_path)
    settings, preset = merge_settings({"model": "sdxl"})
    assert preset == "sdxl"
    assert (settings["model"], settings["width"]) == ("stabilityai/stable-diffusion-xl-base-1.0", 1024)
    settings, preset = merge_settings({})
    assert preset == "demo" and settings["model"] == "package:demo/model"


def test_bad_user_config_is_named(monkeypatch, tmp_path):
    from dreamcli.config import merge_settings

    monkeypatch.setenv("DREAMCLI_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text("stepz = 3\n")
    with pytest.raises(InputError, match="config.toml: unknown key 'stepz'"):
        merge_settings({})
