"""Memory options for big models on small GPUs: CPU offloading, fp8 / 4-bit / 8-bit weights, SD3 without T5,
and the choice of what fits when the user names none."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.util import find_spec

from dreamcli.errors import InputError

# Of the free GPU memory, the share the weights may fill: the rest is for activations (attention at 1024 px),
# the VAE decode and CUDA's own workspace.
FIT = 0.85
BITSANDBYTES = {  # --quantize value -> diffusers' backend name and its BitsAndBytesConfig arguments
    "nf4": ("bitsandbytes_4bit", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
    "int8": ("bitsandbytes_8bit", {"load_in_8bit": True}),
}


def t5_component(family) -> str | None:
    """The pipeline attribute holding the family's T5 text encoder ("text_encoder_3" for SD3), or None."""
    import diffusers

    pipeline = getattr(diffusers, family.pipeline_class("text2img"))
    for name, types in pipeline._get_signature_types().items():
        if any(getattr(kind, "__name__", "") == "T5EncoderModel" for kind in types):
            return name
    return None


def load_kwargs(family, options, device: str, compute_dtype, single_file: bool = False) -> dict:
    """What from_pretrained / from_single_file needs for these options, to merge into its keyword arguments.

    --no-t5 leaves SD3's T5 out (text_encoder_3=None, tokenizer_3=None); --quantize nf4 / int8 quantize the
    denoiser and the T5 encoder with bitsandbytes while they load (the only time bitsandbytes can). Refuses,
    in one line, what cannot work here: nf4 / int8 without CUDA or without bitsandbytes, or from a single
    file (a pipeline's from_single_file takes no quantization config), and --no-t5 on other families.
    """
    kwargs = {}
    t5 = t5_component(family)
    if options.no_t5:
        if not family.t5_optional:
            need = "need their T5 encoder for every prompt" if t5 else "have no T5 encoder"
            raise InputError(f"--no-t5 works only with SD3 models; {family.label} models {need}: leave out --no-t5")
        kwargs.update({t5: None, t5.replace("text_encoder", "tokenizer"): None})  # tokenizer_3 goes with it
    mode = options.quantize
    if mode in BITSANDBYTES:
        if not device.startswith("cuda"):
            raise InputError(f"--quantize {mode} needs a CUDA GPU: use --quantize fp8 or leave it out")
        if find_spec("bitsandbytes") is None:
            raise InputError(f"--quantize {mode} needs bitsandbytes: pip install bitsandbytes, or use --quantize fp8")
        if single_file:
            raise InputError(
                f"--quantize {mode} needs a diffusers folder or hub repo, not a single file: use --quantize fp8, "
                "or -m the model's diffusers folder"
            )
        from diffusers import PipelineQuantizationConfig

        backend, quant_kwargs = BITSANDBYTES[mode]
        if mode == "nf4":
            quant_kwargs = {**quant_kwargs, "bnb_4bit_compute_dtype": compute_dtype}
        components = [family.denoiser] + ([t5] if t5 and not options.no_t5 else [])
        kwargs["quantization_config"] = PipelineQuantizationConfig(
            quant_backend=backend, quant_kwargs=quant_kwargs, components_to_quantize=components
        )
    return kwargs


def quantize(pipe, family, mode: str | None, compute_dtype, training: bool = False) -> None:
    """Store the denoiser's weights in fp8 (--quantize fp8), cast up layer by layer as each one runs.

    nf4 and int8 happen while loading (load_kwargs); None and "none" leave the weights as loaded. The text
    encoders stay as they are: transformers' T5 casts its activations to its weights' dtype, which fp8
    storage would turn into fp8 arithmetic. For `training`, convolutions stay in the compute dtype too:
    autograd saves a convolution's weight itself (a linear layer's as a transposed view), and gradient
    checkpointing's recomputation then finds it cast back to fp8 and stops with torch's CheckpointError.
    """
    if mode != "fp8":
        return

    denoiser = getattr(pipe, family.denoiser)
    if getattr(denoiser, "is_quantized", False):  # GGUF files, bitsandbytes: diffusers marks every quantized model
        raise InputError(
            f"--quantize fp8 needs full-precision weights, and this {family.label} {family.denoiser} is quantized "
            "already: leave out --quantize"
        )
    _store_fp8(denoiser, compute_dtype, training)
    _adapters_in(denoiser, compute_dtype)


def _store_fp8(model, compute_dtype, training: bool) -> None:
    import torch

    convolutions = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d) if training else None
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                                   skip_modules_classes=convolutions)


def fp8_bytes(model) -> int:
    """Bytes the model's weights take once quantize() stores them in fp8.

    Layerwise casting leaves norms, embeddings and the model's own skip list in their dtype (a third of
    Flux dev's weights: 15.2 GB in fp8, not 11.9), which one byte per weight would miss. Worked out on a
    weightless (meta) copy by diffusers' own choice of layers, then counted on the real weights.
    """
    import torch

    with torch.device("meta"):
        copy = type(model).from_config(model.config)
    _store_fp8(copy, torch.bfloat16, training=False)
    stored = {name for name, param in copy.named_parameters() if param.dtype == torch.float8_e4m3fn}
    weights = sum(param.numel() * (1 if name in stored else param.element_size())
                  for name, param in model.named_parameters())
    return weights + sum(buffer.numel() * buffer.element_size() for buffer in model.buffers())


def fp8_backward(model):
    """A context for training's forward pass: the backward pass re-reads fp8-stored weights from their storage.

    Layerwise casting casts each fp8 weight up for its layer's forward, and autograd keeps that cast copy
    for the backward pass (to carry gradients through the layer to the adapters before it): without
    gradient checkpointing every layer's copy would stay alive until backward, more memory than the
    unquantized model. Saved-tensor hooks keep a reference to the fp8 weight instead and cast it up
    again when backward needs it; the values are the same. Models without fp8 storage get a no-op context.
    """
    import contextlib

    import torch

    stored = {id(param): param for module in model.modules() if _casts_layerwise(module)
              for param in module.parameters(recurse=False)}
    if not stored:
        return contextlib.nullcontext()

    def pack(tensor):
        base = tensor if tensor._base is None else tensor._base
        param = stored.get(id(base))  # `stored` keeps its parameters alive: an equal id is the same object
        if param is None:
            return tensor
        return param, tensor.dtype, tensor.size(), tensor.stride(), tensor.storage_offset()

    def unpack(saved):
        if isinstance(saved, torch.Tensor):
            return saved
        param, dtype, size, stride, offset = saved
        return torch.as_strided(param.to(dtype), size, stride, offset)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _casts_layerwise(module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("layerwise_casting") is not None


def _adapters_in(model, compute_dtype) -> None:
    """Make LoRAs loaded later on an fp8-stored model hold their weights in the compute dtype.

    peft gives each new adapter the dtype of the layer it wraps, and an fp8 LoRA matrix can neither keep a
    LoRA's small values nor multiply. peft reads a layer's `compute_dtype` first where it has one (it does
    so for bitsandbytes layers), so each fp8-stored layer gets one.
    """
    for module in model.modules():
        if _casts_layerwise(module):
            module.compute_dtype = compute_dtype


def apply_offload(pipe, family, mode: str | None, device: str) -> None:
    """Put the pipeline on its device, keeping weights in CPU memory as the offload mode says.

    model: each model moves in whole when it runs and out when the next one does (one model's size on
    the GPU). group: the denoiser's blocks one at a time, the text encoders layer by layer, prefetched on a
    CUDA stream while the previous one computes; the VAE stays on the GPU. sequential: every layer moves in
    when it runs (least memory, slowest). On the CPU there is nothing to offload to: everything just stays.
    """
    if mode in (None, "none") or device == "cpu":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group":
        _group_offload(pipe, family, device)
    else:
        raise InputError(f"unknown offload {mode!r}: use model, sequential or group")


def _group_offload(pipe, family, device: str) -> None:
    import torch
    from diffusers.hooks import apply_group_offloading

    onload = torch.device(device)
    stream = onload.type == "cuda"  # prefetch the next group while this one runs
    # Pinning tensors as they move, not all up front: pinned copies of a 12 B model would need its size
    # again in CPU memory.
    common = {"onload_device": onload, "offload_device": torch.device("cpu"), "use_stream": stream,
              "non_blocking": stream, "low_cpu_mem_usage": True}
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if name == family.autoencoder:
            component.to(onload)  # small, and decode_latents recasts it in place on an fp16 overflow
        elif name == family.denoiser and not getattr(component, "is_quantized", False):
            component.enable_group_offload(offload_type="block_level", num_blocks_per_group=1, **common)
        else:
            # transformers' encoders keep their layers two levels down, where block_level does not look;
            # bitsandbytes layers move layer by layer as in diffusers' own example.
            apply_group_offloading(component, offload_type="leaf_level", **common)


def pipeline_bytes(pipe) -> dict[str, int]:
    """Bytes each model of a loaded pipeline takes now (parameters and buffers), by component name.

    Read off the loaded weights, before they are placed: exact for every source (folder, single file,
    hub), dtype and quantization, and without the components --no-t5 left out.
    """
    import torch

    sizes = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            sizes[name] = sum(t.numel() * t.element_size() for t in tensors)
    return sizes


def choose(family, weights: Mapping[str, int] | int, free_bytes: int, device: str = "cuda",
           dtype_bytes: int = 2, fp8: bool = True, fp8_denoiser: int | None = None,
           ) -> tuple[str | None, str | None, str]:
    """(offload, quantize, reason): the fastest memory setting whose weights fit the free GPU memory.

    weights: bytes per component (pipeline_bytes), or one number for the denoiser alone. Tried in order,
    the first whose weights fit FIT of free_bytes wins: everything on the GPU; the denoiser in fp8 (one
    byte per weight instead of dtype_bytes); model offload (the largest model must fit); fp8 and model
    offload; else group offload, which holds one block at a time. fp8=False skips the fp8 steps (a denoiser
    quantized already). fp8_denoiser: the denoiser's bytes in fp8 as fp8_bytes() counts them; without it,
    every weight is taken at one byte.
    """
    sizes = dict(weights) if isinstance(weights, Mapping) else {family.denoiser: int(weights)}
    total = sum(sizes.values())
    denoiser = sizes.get(family.denoiser, 0)
    largest_other = max((size for name, size in sizes.items() if name != family.denoiser), default=0)
    in_fp8 = fp8_denoiser if fp8_denoiser is not None else denoiser / dtype_bytes
    budget = FIT * free_bytes
    ladder = (
        (None, None, total, "everything on the GPU"),
        (None, "fp8", total - denoiser + in_fp8, f"fp8 {family.denoiser}"),
        ("model", None, max(denoiser, largest_other), "model offload"),
        ("model", "fp8", max(in_fp8, largest_other), f"fp8 {family.denoiser} + model offload"),
    )
    offload, quant, what = next(
        ((offload, quant, what) for offload, quant, need, what in ladder if need <= budget and (fp8 or not quant)),
        ("group", None, "group offload"),
    )
    reason = (
        f"{family.label} weights {total / 1e9:.1f} GB ({family.denoiser} {denoiser / 1e9:.1f} GB), "
        f"{free_bytes / 1e9:.1f} GB free on {device}: {what}"
    )
    return offload, quant, reason


def resolve(pipe, family, options, device: str) -> tuple[str | None, str | None, str | None]:
    """(offload, quantize, reason) to apply to a pipeline just loaded for these options on this device.

    With neither --offload nor --quantize given (both "auto"), a CUDA device gets what choose() says fits
    its free memory now, with the reason to show; elsewhere nothing. A value given is kept, and the other
    one is then "none". Offloading from the CPU to itself is dropped. nf4 / int8 are never chosen: they
    need bitsandbytes and must be asked for before loading; nor is fp8 for a denoiser quantized already.
    """
    offload, quant = options.offload, options.quantize
    if offload is None and quant is None and device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        denoiser = getattr(pipe, family.denoiser)
        quantized = getattr(denoiser, "is_quantized", False)
        return choose(family, pipeline_bytes(pipe), free, device, fp8=not quantized,
                      fp8_denoiser=None if quantized else fp8_bytes(denoiser))
    offload = None if offload in (None, "none") or device == "cpu" else offload
    return offload, None if quant in (None, "none") else quant, None


def describe(offload: str | None, quantize: str | None, pipe, family) -> dict:
    """The memory settings in effect, for the image record: offload, quantize, and whether a T5 encoder
    runs (None for families without one)."""
    t5 = t5_component(family)
    return {
        "offload": None if offload == "none" else offload,
        "quantize": None if quantize == "none" else quantize,
        "t5": None if t5 is None else getattr(pipe, t5, None) is not None,
    }
