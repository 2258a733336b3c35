"""The DreamBooth dataset: each example pairs an instance image with a class image."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dreamcli.training.images import training_tensor


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

    def __len__(self) -> int:
        return max(len(self.instance), len(self.classes))

    def pixels(self, path: Path, key: str | None = None) -> torch.Tensor:
        """One image as a [-1, 1] tensor, centre-cropped, or with --random-crop cropped and flipped by a
        generator seeded from `key`.

        Not the global `random`: the data loader reads one batch ahead, so a crop would come from
        before or after a checkpoint's saved state depending on where the run started.
        """
        rng = random.Random(f"{self.seed}:{key}") if self.random_crop and key is not None else None
        return training_tensor(path, self.resolution, rng)

    def __getitem__(self, index: int) -> dict:
        i, item = index % len(self.instance), {}
        key = f"{self.epoch}:{index}"
        item["instance"] = self.cached["instance"][i] if self.cached else self.pixels(self.instance[i], f"i:{key}")
        if self.classes:
            j = index % len(self.classes)
            item["class"] = self.cached["class"][j] if self.cached else self.pixels(self.classes[j], f"c:{key}")
        return item

    @torch.no_grad()
    def cache_latents(self, vae, device, dtype, batch: int = 8) -> None:
        """Encode every image once (centre crop only: a random crop differs each time)."""
        cached = {}
        for kind, paths in (("instance", self.instance), ("class", self.classes)):
            parts = []
            for start in range(0, len(paths), batch):
                pixels = torch.stack([self.pixels(p) for p in paths[start : start + batch]])
                # The distribution's parameters (mean, log-variance): a fresh sample is drawn each step.
                parts.append(vae.encode(pixels.to(device, dtype)).latent_dist.parameters.cpu())
            cached[kind] = torch.cat(parts) if parts else torch.empty(0)
        self.cached = cached


def collate(examples: list[dict]) -> dict:
    """Stack instance examples first, then class examples (the loss splits the batch in halves)."""
    inputs = [e["instance"] for e in examples] + [e["class"] for e in examples if "class" in e]
    return {"inputs": torch.stack(inputs), "num_instance": len(examples)}
