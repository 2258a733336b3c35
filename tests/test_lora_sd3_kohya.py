"""kohya sd-scripts SD3 LoRAs (civitai's layout) convert to diffusers' layout and draw what the same LoRA draws."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

import tiny_families as tf
import tiny_models as tm
from dreamcli.errors import LoraMismatch
from dreamcli.lora_convert import is_kohya_sd3, kohya_sd3_to_diffusers

RANK, ALPHA = 4, 2.0  # kohya scales each update by alpha / rank: 0.5 here, so a converter that ignores it fails
STD = 0.3
PROMPT = "a red circle"
QKV = {"attn.to_q": "attn.to_k", "attn.add_q_proj": "attn.add_k_proj"}  # groups that are one matrix in kohya's file
CLIP_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3-kohya")
    pipe = tf.build_sd3(tm.write_tokenizer(root / "clip"), tf.write_t5_tokenizer(root / "t5"))
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built in memory, not loaded: T5's dropout would make every prompt encoding differ
    return pipe


def _lora_targets(transformer) -> dict:
    """Every layer a kohya SD3 LoRA can train on this transformer: blocks, embedders and the final layer."""
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    return {name: module for name, module in transformer.named_modules() if isinstance(module, layers)}


def _random_lora(modules: dict, seed: int) -> dict:
    """module name -> (A, B) with random non-zero values; q, k and v of one attention share A, as in a kohya file,
    whose fused qkv layer has a single lora_down."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in modules.items():
        if isinstance(module, torch.nn.Conv2d):
            a_shape, b_shape = (RANK, module.in_channels, *module.kernel_size), (module.out_channels, RANK, 1, 1)
        else:
            a_shape, b_shape = (RANK, module.in_features), (module.out_features, RANK)
        lora[name] = (torch.randn(a_shape, generator=g) * STD, torch.randn(b_shape, generator=g) * STD)
    for first, second in QKV.items():
        for name in [n for n in lora if n.endswith(first)]:
            shared = lora[name][0]
            for other in (second, second.replace("k", "v")):
                sibling = name[: -len(first)] + other
                lora[sibling] = (shared, lora[sibling][1])
    return lora


def _kohya_transformer(transformer, lora: dict) -> dict:
    """The kohya file holding the same update as `lora`, named and laid out by Stability's MMDiT.

    The layout comes from tiny_families.sd3_transformer_to_original (the renaming the single-file tests check
    against diffusers' own loader), applied to the B matrices: it fuses q/k/v rows and swaps the (shift, scale)
    halves exactly as it does for weights. A marker tensor per module, run through the same renaming, says
    which module each fused row block came from, so each kohya layer gets the A that module's rows multiply.
    """
    state = transformer.state_dict()
    ups, owners = dict(state), {}
    names = sorted(lora)
    for key, value in state.items():
        module = key.rsplit(".", 1)[0]
        owner = names.index(module) if key.endswith(".weight") and module in lora else -1
        owners[key] = torch.full((max(value.shape[0], 1), 1) if value.ndim else (1, 1), float(owner))
        if owner >= 0:
            ups[key] = lora[module][1]
    layers = transformer.config.num_layers
    ups, owners = (tf.sd3_transformer_to_original(d, layers) for d in (ups, owners))
    out = {}
    for key, marker in owners.items():
        if marker.numel() and marker[0, 0] >= 0:
            name = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            out[f"{name}.lora_down.weight"] = lora[names[int(marker[0, 0])]][0]
            out[f"{name}.lora_up.weight"] = ups[key] * (RANK / ALPHA)  # kohya multiplies by alpha / rank
            out[f"{name}.alpha"] = torch.tensor(ALPHA)
    return out


def _clip_lora(encoder, seed: int) -> dict:
    modules = {n: m for n, m in encoder.named_modules() if n.endswith(CLIP_MODULES)}
    return _random_lora(modules, seed)


def _kohya_clip(lora: dict, prefix: str) -> dict:
    out = {}
    for module, (a, b) in lora.items():
        name = prefix + module.replace(".", "_")  # text_model.encoder.layers.0.self_attn.q_proj -> ..._q_proj
        out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = a, b * (RANK / ALPHA)
        out[f"{name}.alpha"] = torch.tensor(ALPHA)
    return out


def _peft(lora: dict, component: str) -> dict:
    out = {}
    for module, (a, b) in lora.items():
        out[f"{component}.{module}.lora_A.weight"], out[f"{component}.{module}.lora_B.weight"] = a, b
    return out


def _image(pipe, adapter: str | None) -> np.ndarray:
    if adapter is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([adapter])
    out = pipe(PROMPT, num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(7))
    return out.images[0]


def _embeddings(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False)
    return embeds, pooled


def _merged(pipe, parts: dict):
    """A copy of the pipeline with W += B @ A written into each layer: the update, computed without diffusers."""
    pipe = copy.deepcopy(pipe)
    with torch.no_grad():
        for component, lora in parts.items():
            modules = dict(getattr(pipe, component).named_modules())
            for module, (a, b) in lora.items():
                modules[module].weight += (b.flatten(1) @ a.flatten(1)).reshape(modules[module].weight.shape)
    return pipe


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # three adapters on one model, on purpose
def test_kohya_lora_draws_what_the_same_diffusers_lora_draws(sd3):
    lora = _random_lora(_lora_targets(sd3.transformer), seed=1)
    te1, te2 = _clip_lora(sd3.text_encoder, seed=2), _clip_lora(sd3.text_encoder_2, seed=3)
    kohya = _kohya_transformer(sd3.transformer, lora) | _kohya_clip(te1, "lora_te1_") | _kohya_clip(te2, "lora_te2_")
    # The layers a civitai SD3 LoRA names, the last block's (shift, scale) text modulation among them.
    assert {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight",
            "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.alpha",
            "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"} <= set(kohya)
    assert is_kohya_sd3(kohya)

    plain = _image(sd3, None)
    sd3.load_lora_weights(_peft(lora, "transformer") | _peft(te1, "text_encoder") | _peft(te2, "text_encoder_2"),
                          adapter_name="diffusers")
    sd3.load_lora_weights(kohya_sd3_to_diffusers(kohya), adapter_name="kohya")
    # A mistake the image must show: the final layer's modulation rows not swapped back to diffusers' order.
    wrong = dict(kohya)
    up = wrong["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"]
    wrong["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"] = torch.cat(up.chunk(2)[::-1])
    sd3.load_lora_weights(kohya_sd3_to_diffusers(wrong), adapter_name="wrong")
    try:
        with_diffusers, with_kohya, with_wrong = (_image(sd3, name) for name in ("diffusers", "kohya", "wrong"))
        adapters = sd3.get_list_adapters()
    finally:
        sd3.unload_lora_weights()
    merged = _image(_merged(sd3, {"transformer": lora, "text_encoder": te1, "text_encoder_2": te2}), None)

    assert set(adapters) == {"transformer", "text_encoder", "text_encoder_2"}
    assert np.abs(with_diffusers - plain).mean() > 0.02  # the LoRA changes the picture...
    np.testing.assert_allclose(with_kohya, with_diffusers, atol=1e-5)  # ...and the kohya file changes it the same
    np.testing.assert_allclose(with_kohya, merged, atol=1e-4)  # as the update written into the weights does
    assert np.abs(with_wrong - with_kohya).mean() > 1e-3


def test_text_encoder_parts_change_clip_l_and_clip_g_as_merged_weights_do(sd3):
    te1, te2 = _clip_lora(sd3.text_encoder, seed=4), _clip_lora(sd3.text_encoder_2, seed=5)
    # Only q/k/v on CLIP-L: diffusers cannot guess that layout by itself (no out_proj to recognise it by).
    te1 = {k: v for k, v in te1.items() if "out_proj" not in k and "mlp" not in k}
    state = kohya_sd3_to_diffusers(_kohya_clip(te1, "lora_te1_") | _kohya_clip(te2, "lora_te2_"))
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in state
    assert "text_encoder_2.text_model.encoder.layers.1.mlp.fc2.lora_B.weight" in state
    assert not any(key.startswith("transformer.") for key in state)

    plain = _embeddings(sd3)
    sd3.load_lora_weights(state, adapter_name="te")
    try:
        with_lora = _embeddings(sd3)
    finally:
        sd3.unload_lora_weights()
    expected = _embeddings(_merged(sd3, {"text_encoder": te1, "text_encoder_2": te2}))
    for got, want, before in zip(with_lora, expected, plain, strict=True):
        assert (got - before).abs().mean() > 1e-2
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_alpha_is_folded_in_and_fused_qkv_is_split():
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 8, generator=g), torch.randn(24, 4, generator=g)
    base = "lora_unet_joint_blocks_3_context_block_attn_qkv"
    state = kohya_sd3_to_diffusers({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                                    f"{base}.alpha": torch.tensor(1.0)})
    assert sorted(state) == sorted(f"transformer.transformer_blocks.3.attn.add_{p}_proj.lora_{m}.weight"
                                   for p in "qkv" for m in "AB")
    for i, p in enumerate("qkv"):
        prefix = f"transformer.transformer_blocks.3.attn.add_{p}_proj"
        product = state[f"{prefix}.lora_B.weight"] @ state[f"{prefix}.lora_A.weight"]
        torch.testing.assert_close(product, (up @ down)[8 * i: 8 * (i + 1)] / 4)  # alpha 1 / rank 4
    # Without an alpha, kohya's scale is 1.
    state = kohya_sd3_to_diffusers({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up})
    torch.testing.assert_close(state["transformer.transformer_blocks.3.attn.add_k_proj.lora_B.weight"], up[8:16])


@pytest.mark.parametrize(("key", "says"), [
    ("lora_unet_joint_blocks_0_x_block_attn_ln_q.lora_down.weight", "not a layer of a kohya SD3 LoRA"),
    ("lora_unet_joint_blocks_0_x_block_attn_qkv.hada_w1_a", "a LoHa weight, not a LoRA"),
    ("lora_unet_joint_blocks_0_x_block_attn_qkv.dora_scale", "a DoRA weight, not a LoRA"),
    ("lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight", "trains SD3's T5 text encoder"),
    ("lora_te1_text_model_final_layer_norm.lora_down.weight", "not a layer of a kohya SD3 LoRA"),
])
def test_unknown_tensors_are_refused_by_name(key, says):
    good = "lora_unet_joint_blocks_0_x_block_attn_proj"
    state = {f"{good}.lora_down.weight": torch.zeros(2, 8), f"{good}.lora_up.weight": torch.zeros(8, 2),
             key: torch.zeros(2, 8), "zz_after.lora_down.weight": torch.zeros(1)}
    with pytest.raises(LoraMismatch) as caught:
        kohya_sd3_to_diffusers(state, source="LoRA style.safetensors")
    message = str(caught.value)
    assert message.startswith(f"LoRA style.safetensors has tensor {key}, which ")
    assert says in message and "zz_after" not in message  # the first unknown tensor, not every one


def test_a_layer_without_its_up_weight_is_refused():
    name = "lora_unet_joint_blocks_0_x_block_mlp_fc1"
    with pytest.raises(LoraMismatch, match=f"has no {name}.lora_up.weight: the file is incomplete"):
        kohya_sd3_to_diffusers({f"{name}.lora_down.weight": torch.zeros(2, 8), f"{name}.alpha": torch.tensor(2.0)})


def test_only_kohya_sd3_files_are_claimed(tmp_path):
    config = SimpleNamespace(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16)
    flux_file = tf.save_flux_kohya_lora(SimpleNamespace(transformer=SimpleNamespace(config=config)),
                                        tmp_path / "flux-kohya.safetensors")
    with safe_open(str(flux_file), "pt") as f:
        flux_keys = list(f.keys())
    assert any(key.startswith("lora_unet_double_blocks_") for key in flux_keys)
    assert not is_kohya_sd3(flux_keys)
    assert not is_kohya_sd3(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"])  # SDXL
    assert not is_kohya_sd3(["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"])  # diffusers SD3
    assert is_kohya_sd3(iter(["lora_unet_joint_blocks_0_context_block_mlp_fc1.lora_down.weight"]))


def test_files_are_read_only_when_they_are_kohya_sd3(tmp_path):
    from safetensors.torch import save_file

    from dreamcli.lora_convert import read_kohya_sd3

    name = "lora_unet_joint_blocks_1_x_block_attn_proj"
    kohya = tmp_path / "civitai.safetensors"
    save_file({f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": torch.ones(8, 2),
               f"{name}.alpha": torch.tensor(1.0)}, str(kohya))
    state = read_kohya_sd3(kohya)
    torch.testing.assert_close(state["transformer.transformer_blocks.1.attn.to_out.0.lora_B.weight"]
                               @ state["transformer.transformer_blocks.1.attn.to_out.0.lora_A.weight"],
                               torch.full((8, 8), 1.0))  # ones(8, 2) @ ones(2, 8) = 2, times alpha 1 / rank 2
    diffusers = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, 8)}, str(diffusers))
    assert read_kohya_sd3(diffusers) is None
    assert read_kohya_sd3(tmp_path / "old.pt") is None  # pickles stay with diffusers' loader (and its checks)


def test_dream_gen_takes_a_kohya_sd3_lora_file(sd3, cli, tmp_path):
    """Through the CLI and the engine: the civitai-style file draws what the same LoRA in diffusers' format draws."""
    from safetensors.torch import save_file

    from conftest import pixels, written

    folder = tmp_path / "sd3"
    sd3.save_pretrained(folder)
    lora = _random_lora(_lora_targets(sd3.transformer), seed=4)
    kohya_file = tmp_path / "civitai-sd3.safetensors"
    kohya = _kohya_transformer(sd3.transformer, lora)
    save_file({k: v.clone().contiguous() for k, v in kohya.items()}, str(kohya_file))
    diffusers_dir = tmp_path / "diffusers-lora"
    diffusers_dir.mkdir()
    save_file({k: v.clone().contiguous() for k, v in _peft(lora, "transformer").items()},  # q, k, v share A
              str(diffusers_dir / "pytorch_lora_weights.safetensors"))

    def draw(*lora_args):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        result = cli("gen", "-m", folder, PROMPT, "--steps", 2, "-W", 32, "-H", 32, "-s", 7, "-o", out, "-q",
                     *lora_args)
        assert result.exit_code == 0, result.output
        return pixels(written(out)[0]).astype(int)

    plain, kohya, reference = draw(), draw("--lora", kohya_file), draw("--lora", diffusers_dir)
    assert np.abs(kohya - plain).mean() > 0.5  # the LoRA changes the picture...
    assert np.abs(kohya - reference).max() <= 1  # ...as the same LoRA in diffusers' format does
    assert (draw("--lora", f"{kohya_file}:0") == plain).all()
