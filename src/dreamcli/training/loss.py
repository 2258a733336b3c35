"""The DreamBooth loss: denoising error on the subject plus a weighted error on the class prior."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dreamcli.errors import InputError


class Noised(NamedTuple):
    """One step's noisy latents, the timesteps the denoiser is told, what it should predict, and how much each
    example's error counts (None: equally)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    sigmas: torch.Tensor | None = None
    weighting: torch.Tensor | None = None


def ddpm_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor) -> Noised:
    """DDPM: a uniform integer timestep per example; the target follows the model's prediction type."""
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return Noised(noisy, timesteps, diffusion_target(scheduler, latents, noise, timesteps))


def flow_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, density: str = "logit_normal") -> Noised:
    """Rectified flow (SD3, Flux): x_t = (1 - sigma) x0 + sigma noise, target noise - x0.

    u is drawn from `density` (logit-normal: mean 0, std 1; "mode": scale 1.29; "uniform"), then mapped to one of
    the scheduler's training timesteps, whose sigma carries the model's shift (3.0 for SD3). "cosmap" draws u
    uniformly and weights the loss instead, as in the SD3 paper.
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    scheme = "none" if density == "uniform" else density
    u = compute_density_for_timestep_sampling(scheme, latents.shape[0], logit_mean=0.0, logit_std=1.0,
                                              mode_scale=1.29)
    indices = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(scheduler.timesteps) - 1)
    timesteps = scheduler.timesteps[indices].to(latents.device)
    sigmas = scheduler.sigmas[indices].to(latents.device, torch.float32).view(-1, *([1] * (latents.ndim - 1)))
    noisy = ((1.0 - sigmas) * latents.float() + sigmas * noise.float()).to(latents.dtype)
    weighting = compute_loss_weighting_for_sd3(scheme, sigmas)
    return Noised(noisy, timesteps, noise - latents, sigmas, weighting)


def preconditioned(pred: torch.Tensor, noised: Noised, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's preconditioning (the SD3 script's default): turn the velocity into an x0 estimate,
    x_t - sigma v, and compare it with the clean latents."""
    return pred * (-noised.sigmas) + noised.noisy, latents


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
    model_pred: torch.Tensor, target: torch.Tensor, prior_loss_weight: float = 1.0, with_prior: bool = True,
    weighting: torch.Tensor | None = None,
) -> LossParts:
    """loss = MSE(instance) + prior_loss_weight x MSE(class).

    With prior preservation the batch holds the instance examples in its first half and the class
    examples in its second half; each MSE is the mean over its half's elements, each element's squared
    error times its example's `weighting` when given (SD3's loss weighting). Computed in fp32
    so that fp16/bf16 predictions do not lose the small differences late in training.
    """
    model_pred, target = model_pred.float(), target.float()
    weighting = torch.ones(model_pred.shape[0], *([1] * (model_pred.ndim - 1))) if weighting is None else weighting
    weighting = weighting.float().to(model_pred.device)

    def mse(pred, goal, weight):
        if torch.all(weight == 1):
            return F.mse_loss(pred, goal, reduction="mean")
        return (weight * (pred - goal) ** 2).mean()

    if not with_prior:
        instance = mse(model_pred, target, weighting)
        return LossParts(instance, instance, torch.zeros_like(instance))
    pred_instance, pred_class = torch.chunk(model_pred, 2, dim=0)
    target_instance, target_class = torch.chunk(target, 2, dim=0)
    weight_instance, weight_class = torch.chunk(weighting, 2, dim=0)
    instance = mse(pred_instance, target_instance, weight_instance)
    prior = mse(pred_class, target_class, weight_class)
    return LossParts(instance + prior_loss_weight * prior, instance, prior)
