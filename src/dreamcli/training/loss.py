"""The DreamBooth loss: denoising error on the subject plus a weighted error on the class prior."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dreamcli.errors import InputError


class LossParts(NamedTuple):
    """The total loss and its two terms (prior is 0 without prior preservation)."""

    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon models) or the velocity (v-prediction, SD 2.x 768)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise InputError(f"the model predicts {kind!r}; dream tune trains epsilon and v_prediction models")


def dreambooth_loss(
    model_pred: torch.Tensor, target: torch.Tensor, prior_loss_weight: float = 1.0, with_prior: bool = True
) -> LossParts:
    """loss = MSE(instance) + prior_loss_weight x MSE(class).

    With prior preservation the batch holds the instance examples in its first half and the class
    examples in its second half; each MSE is the mean over its half's elements. Computed in fp32
    so that fp16/bf16 predictions do not lose the small differences late in training.
    """
    model_pred, target = model_pred.float(), target.float()
    if not with_prior:
        instance = F.mse_loss(model_pred, target, reduction="mean")
        return LossParts(instance, instance, torch.zeros_like(instance))
    pred_instance, pred_class = torch.chunk(model_pred, 2, dim=0)
    target_instance, target_class = torch.chunk(target, 2, dim=0)
    instance = F.mse_loss(pred_instance, target_instance, reduction="mean")
    prior = F.mse_loss(pred_class, target_class, reduction="mean")
    return LossParts(instance + prior_loss_weight * prior, instance, prior)
