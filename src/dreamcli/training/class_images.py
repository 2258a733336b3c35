"""Class images for prior preservation: made once by the base model, cached, and reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dreamcli.config import cache_dir
from dreamcli.io.outputs import replacing

BATCH = 4  # images per pipeline call: faster than one by one, small enough for any GPU at 512 px


def cache_folder(model_id: str, class_prompt: str, resolution: int, steps: int, guidance: float) -> Path:
    """The cache folder for (model, class prompt, resolution, sampling steps and guidance), under the user
    cache: other sampling settings make other pictures, so they are not mixed."""
    key = json.dumps([model_id, class_prompt, resolution, steps, guidance])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "class-images" / digest


def class_image_path(folder: Path, index: int) -> Path:
    """Where class image `index` (made with seed `index`) is cached."""
    return folder / f"class-{index:05d}.png"


def make_class_images(
    pipe, folder: Path, count: int, prompt: str, resolution: int, steps: int, guidance: float,
    meta: dict, on_progress=None, call_args: dict | None = None,
) -> list[Path]:
    """Return `count` cached class images, generating only the missing ones.

    Image i always uses seed i, so a cache topped up later holds the same pictures it would have
    held had it been made in one go. Each file is renamed into place when complete, so an
    interrupted run leaves no half-written image behind. `call_args` are what the model's family adds to a pipeline
    call (families' call_args), so the pictures are drawn as dream gen draws them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [class_image_path(folder, i) for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    if not missing:
        return paths
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        meta_path.write_text(json.dumps({**meta, "prompt": prompt, "resolution": resolution}, indent=2))
    if on_progress:
        on_progress("class images", count - len(missing), count)
    for start in range(0, len(missing), BATCH):
        seeds = missing[start : start + BATCH]
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        images = pipe(
            [prompt] * len(seeds), height=resolution, width=resolution, num_inference_steps=steps,
            guidance_scale=guidance, generator=generators, **(call_args or {}),
        ).images
        for seed, image in zip(seeds, images, strict=True):
            with replacing(paths[seed]) as f:
                image.save(f, format="PNG")
        if on_progress:
            on_progress("class images", count - len(missing) + start + len(seeds), count)
    return paths
