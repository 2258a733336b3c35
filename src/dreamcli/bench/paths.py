"""The two things compared: dreamcli's generation path and plain diffusers, loaded from the same folder."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    """Wait for the device: GPU work is queued, so a clock read without this times only the launches."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def reset_peak(device: str) -> None:
    """Start a fresh peak-memory window (CUDA's allocator keeps one; the CPU has none to ask)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: str) -> float | None:
    """Peak GPU memory allocated by tensors since reset_peak, in GB (10^9 bytes); None on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


FP8 = "float8_e4m3fn"  # fp8 storage: diffusers' layerwise casting keeps weights in it, computes in the run's dtype


def cast_to_fp8(model, compute_dtype) -> None:
    """Store the denoiser's weights in fp8 and upcast each layer's for its own call (diffusers' layerwise casting)."""
    model.enable_layerwise_casting(storage_dtype=getattr(torch, FP8), compute_dtype=compute_dtype)


def weight_dtype(model) -> str:
    """The dtype the denoiser's linear weights are stored in (norms may stay wider under fp8 storage)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            return str(module.weight.dtype).removeprefix("torch.")
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def release(device: str) -> None:
    """Give memory back between measurements, so one path's leftovers never count in the next one's peak."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


class DreamcliPath:
    """dreamcli's own path: engine.load_model, then tasks.iter_generate, as `dream gen` runs them."""

    def __init__(self, folder: Path | str, device: str, dtype: str, offload: bool = False, compile: bool = False,
                 fp8: bool = False):
        from dreamcli.requests import ModelOptions

        self.device, self.dtype, self.fp8 = device, dtype, fp8
        self.options = ModelOptions(model=str(folder), device=device, dtype=dtype, offload=offload, compile=compile)
        self.loaded = None
        self.name = "dreamcli" + ("+compile" if compile else "") + ("+offload" if offload else "") + \
            ("+fp8" if fp8 else "")

    def load(self) -> float:
        """Load the model from disk (the process cache emptied first); returns seconds."""
        from dreamcli import engine

        engine.clear_cache()
        release(self.device)
        sync(self.device)
        started = time.perf_counter()
        self.loaded = engine.load_model(self.options)
        if self.fp8:
            # The fast paths first: fused projections are new layers, which casting set up earlier would miss.
            engine.pipeline_for("text2img", self.options)
            cast_to_fp8(self.loaded.denoiser, engine.DTYPES[self.dtype])
        sync(self.device)
        return time.perf_counter() - started

    def generate(self, prompt: str, batch: int, steps: int, guidance: float, size: tuple[int, int], on_step) -> int:
        """Make `batch` images in one UNet batch; returns how many came back."""
        from dreamcli.requests import GenRequest
        from dreamcli.tasks.generate import iter_generate

        request = GenRequest(prompt, model=self.options, num_inference_steps=steps, guidance_scale=guidance,
                             width=size[0], height=size[1], num_images=batch, seed=0)
        return len(list(iter_generate(request, on_step, batch_size=batch)))

    def details(self) -> dict:
        """What dreamcli switched on for this model (fast paths, compile warm-up)."""
        from dreamcli.engine import fast_paths

        if self.loaded is None:
            return {}
        return {"fast_paths": fast_paths(self.loaded), "compile_seconds": self.loaded.compile_seconds,
                "weights": weight_dtype(self.loaded.denoiser)}

    def close(self) -> None:
        from dreamcli import engine

        engine.clear_cache()
        self.loaded = None
        if self.options.compile:
            torch._dynamo.reset()  # compiled graphs hold on to the model's weights
        release(self.device)


class DiffusersPath:
    """Plain diffusers: the family's text-to-image pipeline class (from the registry), from_pretrained in the dtype,
    default attention; with fp8, the denoiser's weights stored in fp8 as diffusers' docs show."""

    def __init__(self, folder: Path | str, family: str, device: str, dtype: str, fp8: bool = False):
        from dreamcli import families

        self.folder, self.device, self.dtype, self.fp8 = str(folder), device, dtype, fp8
        self.family = families.get(family)
        self.pipe = None
        self.name = "diffusers" + ("+fp8" if fp8 else "")

    def load(self) -> float:
        """Load the pipeline from disk and move it to the device; returns seconds."""
        import diffusers

        from dreamcli.engine import DTYPES, dtype_kwargs

        cls = getattr(diffusers, self.family.pipeline_class("text2img"))
        release(self.device)
        sync(self.device)
        started = time.perf_counter()
        pipe = cls.from_pretrained(self.folder, **dtype_kwargs(DTYPES[self.dtype]))
        if self.fp8:  # before the move: the weights travel to the device in fp8
            cast_to_fp8(getattr(pipe, self.family.denoiser), DTYPES[self.dtype])
        pipe.to(self.device)
        sync(self.device)
        seconds = time.perf_counter() - started
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        return seconds

    def generate(self, prompt: str, batch: int, steps: int, guidance: float, size: tuple[int, int], on_step) -> int:
        """Make `batch` images with one pipeline call; returns how many came back."""

        def step_end(pipe, step, _timestep, callback_kwargs):
            on_step(step + 1, pipe.num_timesteps)  # what the sampler runs (PNDM adds warm-up steps)
            return callback_kwargs

        images = self.pipe(
            prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, width=size[0], height=size[1],
            num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(0),
            callback_on_step_end=step_end,
        ).images
        return len(images)

    def details(self) -> dict:
        """The pipeline class, the attention processors diffusers chose by default, the weights' storage dtype."""
        if self.pipe is None:
            return {}
        denoiser = getattr(self.pipe, self.family.denoiser)
        processors = sorted({type(p).__name__ for p in denoiser.attn_processors.values()})
        return {"pipeline": type(self.pipe).__name__, "attention": "+".join(processors),
                "weights": weight_dtype(denoiser)}

    def close(self) -> None:
        self.pipe = None
        release(self.device)
