"""The DreamBooth dataset: each example pairs an instance image with a class image."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dreamcli.training.images import training_example


class DreamBoothDataset(Dataset):
    """Instance (and, with prior preservation, class) examples, as pixels or cached latents.

    Its length is the larger of the two lists, so every class image is seen once an epoch and
    instance images repeat. With `latents` given (VAE frozen, centre crop) the items are the
    VAE's cached latent distributions instead of pixels.
    """

    def __init__(
        self, instance: list[Path], classes: list[Path], resolution: int, random_crop: bool = False, seed: int = 0
    ):
        self.instance, self.classes = list(instance), list(classes)
        self.resolution, self.random_crop, self.seed = resolution, random_crop, seed
        self.epoch = 0  # set by the training loop; with the seed and the index it picks the random crops
        self.cached: dict[str, torch.Tensor] | None = None
        self.cached_geometry: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return max(len(self.instance), len(self.classes))

    def pixels(self, path: Path, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One image as a [-1, 1] tensor, centre-cropped, or with --random-crop flipped and cropped by a
        generator seeded from `key`; and its geometry (original height, width, crop top, left) for SDXL.

        Not the global `random`: the data loader reads one batch ahead, so a crop would come from
        before or after a checkpoint's saved state depending on where the run started.
        """
        rng = random.Random(f"{self.seed}:{key}") if self.random_crop and key is not None else None
        return training_example(path, self.resolution, rng)

    def _example(self, kind: str, paths: list[Path], i: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cached:
            return self.cached[kind][i], self.cached_geometry[kind][i]
        return self.pixels(paths[i], key)

    def __getitem__(self, index: int) -> dict:
        i, item = index % len(self.instance), {}
        key = f"{self.epoch}:{index}"
        item["instance"], item["instance_geometry"] = self._example("instance", self.instance, i, f"i:{key}")
        if self.classes:
            j = index % len(self.classes)
            item["class"], item["class_geometry"] = self._example("class", self.classes, j, f"c:{key}")
        return item

    @torch.no_grad()
    def cache_latents(self, vae, device, dtype, batch: int = 8) -> None:
        """Encode every image once (centre crop only: a random crop differs each time)."""
        cached, geometry = {}, {}
        for kind, paths in (("instance", self.instance), ("class", self.classes)):
            parts, shapes = [], []
            for start in range(0, len(paths), batch):
                examples = [self.pixels(p) for p in paths[start : start + batch]]
                pixels = torch.stack([pixels for pixels, _ in examples])
                shapes += [shape for _, shape in examples]
                # The distribution's parameters (mean, log-variance): a fresh sample is drawn each step.
                parts.append(vae.encode(pixels.to(device, dtype)).latent_dist.parameters.cpu())
            cached[kind] = torch.cat(parts) if parts else torch.empty(0)
            geometry[kind] = torch.stack(shapes) if shapes else torch.empty(0, 4)
        self.cached, self.cached_geometry = cached, geometry


def collate(examples: list[dict]) -> dict:
    """Stack instance examples first, then class examples (the loss splits the batch in halves), with each
    example's geometry (original size and crop) in the same order."""
    inputs = [e["instance"] for e in examples] + [e["class"] for e in examples if "class" in e]
    geometry = [e["instance_geometry"] for e in examples] + [e["class_geometry"] for e in examples if "class" in e]
    return {"inputs": torch.stack(inputs), "geometry": torch.stack(geometry), "num_instance": len(examples)}
