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


def release(device: str) -> None:
    """Give memory back between measurements, so one path's leftovers never count in the next one's peak."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


class DreamcliPath:
    """dreamcli's own path: engine.load_model, then tasks.iter_generate, as `dream gen` runs them."""

    def __init__(self, folder: Path | str, device: str, dtype: str, offload: bool = False, compile: bool = False):
        from dreamcli.requests import ModelOptions

        self.device = device
        self.options = ModelOptions(model=str(folder), device=device, dtype=dtype, offload=offload, compile=compile)
        self.loaded = None
        self.name = "dreamcli" + ("+compile" if compile else "") + ("+offload" if offload else "")

    def load(self) -> float:
        """Load the model from disk (the process cache emptied first); returns seconds."""
        from dreamcli import engine

        engine.clear_cache()
        release(self.device)
        sync(self.device)
        started = time.perf_counter()
        self.loaded = engine.load_model(self.options)
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
        return {"fast_paths": fast_paths(self.loaded), "compile_seconds": self.loaded.compile_seconds}

    def close(self) -> None:
        from dreamcli import engine

        engine.clear_cache()
        self.loaded = None
        if self.options.compile:
            torch._dynamo.reset()  # compiled graphs hold on to the model's weights
        release(self.device)


class DiffusersPath:
    """Plain diffusers: the family's pipeline class, from_pretrained in the dtype, default attention."""

    name = "diffusers"

    def __init__(self, folder: Path | str, family: str, device: str, dtype: str):
        self.folder, self.family, self.device, self.dtype = str(folder), family, device, dtype
        self.pipe = None

    def load(self) -> float:
        """Load the pipeline from disk and move it to the device; returns seconds."""
        import diffusers

        from dreamcli.engine import DTYPES, dtype_kwargs

        cls = diffusers.StableDiffusionXLPipeline if self.family == "sdxl" else diffusers.StableDiffusionPipeline
        release(self.device)
        sync(self.device)
        started = time.perf_counter()
        pipe = cls.from_pretrained(self.folder, **dtype_kwargs(DTYPES[self.dtype]))
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
        """The attention processors diffusers chose by default."""
        if self.pipe is None:
            return {}
        processors = sorted({type(p).__name__ for p in self.pipe.unet.attn_processors.values()})
        return {"attention": "+".join(processors)}

    def close(self) -> None:
        self.pipe = None
        release(self.device)
