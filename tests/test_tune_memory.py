"""dream tune's memory options: fp8 base weights (--quantize fp8), and the placement that keeps only what the loop
needs on the GPU (frozen text encoders and the VAE leave it once cached; --offload draws pictures one model at a
time). There is no GPU here: the placement runs against a CPU that is told it is an accelerator, which moves
nothing but runs every step of the offload path (diffusers' model offload hooks on and off, mid-run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import pixels
from dreamcli.requests import TuneConfig
from test_tune import load_weights, subject_images


def config_for(model: str, tmp_path, name: str, **overrides) -> TuneConfig:
    settings = dict(
        instance_data_dir=str(subject_images(tmp_path / "subject")), class_word="shape", model=str(model),
        output_dir=str(tmp_path / name), max_train_steps=3, num_class_images=1, class_steps=2, checkpointing_steps=3,
        learning_rate=1e-2, device="cpu", num_validation_images=1, resolution=32, seed=3,
    )
    return TuneConfig(**{**settings, **overrides})


@pytest.fixture
def loaded(monkeypatch):
    """The pipelines tune loads, kept to look at afterwards (the real loader runs)."""
    import dreamcli.engine as engine

    pipes = []
    real = engine.load_base_pipeline

    def keep(*args, **kwargs):
        pipes.append(real(*args, **kwargs))
        return pipes[-1]

    monkeypatch.setattr(engine, "load_base_pipeline", keep)
    return pipes


@pytest.mark.parametrize("name", ["flux-dev", "sd1"])
def test_fp8_base_with_checkpointing_trains_fp32_adapters_that_diffusers_loads(request, tmp_path, loaded, name):
    """Flux (all linear layers) and a UNet (convolutions, which stay bf16: see memory.quantize), both with
    gradient checkpointing, whose recomputation must see the same weights as the forward pass."""
    import diffusers

    from dreamcli.training import tune

    model = request.getfixturevalue("families" if name == "flux-dev" else "tiny")[name]
    result = tune(config_for(model, tmp_path, "fp8", quantize="fp8", mixed_precision="bf16",
                             gradient_checkpointing=True))
    pipe = loaded[0]
    denoiser = pipe.transformer if name == "flux-dev" else pipe.unet
    attention = denoiser.transformer_blocks[0].attn if name == "flux-dev" else \
        denoiser.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attention.to_q.base_layer.weight.dtype == torch.float8_e4m3fn  # stored in fp8 all through training
    assert attention.to_q.lora_A["default"].weight.dtype == torch.float32  # the adapters train in fp32
    if name == "sd1":
        assert denoiser.conv_in.weight.dtype == torch.bfloat16
    weights = load_weights(result.weights)
    assert {t.dtype for t in weights.values()} == {torch.float32}
    ups = [t for k, t in weights.items() if "lora_B" in k or "lora.up" in k]  # diffusers SD1 names: lora.up
    assert ups and any(t.abs().sum() > 0 for t in ups)  # B (up) starts at zero: it learnt
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)

    def picture():
        return pipe("a photo of sks shape", num_inference_steps=2, height=32, width=32,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    before = picture()
    pipe.load_lora_weights(str(result.outdir))
    assert np.abs(picture() - before).mean() > 1e-3


def test_fp8_backward_keeps_the_fp8_weights_not_cast_copies():
    """Autograd would keep every layer's bf16 copy until backward (more memory than bf16 weights alone); with
    fp8_backward it keeps the fp8 weight and casts it again, and the gradients are the same."""
    from diffusers.hooks import apply_layerwise_casting

    from dreamcli import memory

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)]).to(torch.bfloat16)
    model.requires_grad_(False)
    apply_layerwise_casting(model, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    x = torch.randn(8, 256, dtype=torch.bfloat16)

    def kept_bytes_and_grad(context):
        kept = []

        def pack(tensor):
            packed = context.pack_hook(tensor) if context else tensor
            if isinstance(packed, torch.Tensor):
                kept.append(packed.numel() * packed.element_size())
            return packed

        inputs = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, context.unpack_hook if context else (lambda t: t)):
            out = model(inputs).sum()
        out.backward()
        return sum(kept), inputs.grad

    plain_bytes, plain_grad = kept_bytes_and_grad(None)
    fp8_bytes, fp8_grad = kept_bytes_and_grad(memory.fp8_backward(model))
    assert plain_bytes == 4 * 256 * 256 * 2  # each layer's bf16 copy
    assert fp8_bytes == 0
    assert torch.equal(plain_grad, fp8_grad)


def pretend_accelerator(monkeypatch):
    """Placement as on a GPU: models park in CPU memory (here: where they are) and --offload uses diffusers'
    model offload hooks (onto the CPU, which diffusers allows when named)."""
    from dreamcli.training import dreambooth

    init = dreambooth.Placement.__init__

    def as_if_accelerated(self, pipe, device, offload):
        init(self, pipe, device, offload)
        self.accelerated, self.offload = True, offload

    monkeypatch.setattr(dreambooth.Placement, "__init__", as_if_accelerated)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_offload_changes_no_weight_and_no_picture(tiny, tmp_path, monkeypatch, loaded, train_text_encoder):
    from dreamcli.training import tune

    settings = dict(validation_steps=1, train_text_encoder=train_text_encoder)  # validation between steps
    import diffusers

    plain = tune(config_for(tiny["sdxl"], tmp_path, "plain", **settings))
    pretend_accelerator(monkeypatch)
    offloads = []
    real = diffusers.DiffusionPipeline.enable_model_cpu_offload
    monkeypatch.setattr(diffusers.DiffusionPipeline, "enable_model_cpu_offload",
                        lambda pipe, **kw: offloads.append(kw) or real(pipe, **kw))
    offloaded = tune(config_for(tiny["sdxl"], tmp_path, "offload", offload=True, **settings))
    assert len(offloads) >= 3  # a validation round after each of the 3 steps (diffusers re-arms it after a call)
    a, b = load_weights(plain.weights), load_weights(offloaded.weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in plain.validation_images] == [p.name for p in offloaded.validation_images]
    for p, q in zip(plain.validation_images, offloaded.validation_images, strict=True):
        assert np.array_equal(pixels(p), pixels(q))
    # diffusers' offload hooks are gone after each round, and ours (each text encoder in for its own call) after
    # the prompts are encoded: none is left on any model of the pipeline.
    for module in loaded[-1].components.values():
        if isinstance(module, torch.nn.Module):
            assert not any(hasattr(m, "_hf_hook") for m in module.modules())
            assert not module._forward_pre_hooks and not module._forward_hooks
