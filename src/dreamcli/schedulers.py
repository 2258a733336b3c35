"""Friendly scheduler names, their diffusers classes and their A1111 sampler names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerSpec:
    """One friendly name: the diffusers class, config overrides, and the A1111 label."""

    class_name: str
    a1111_name: str
    overrides: dict = field(default_factory=dict)


# Kept free of torch/diffusers imports so that `--scheduler list` and flag validation stay instant.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun"),
    "dpm++2m": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "dpm++2m-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}
    ),
    # The SDE variant of the multistep solver: it needs no torchsde and takes its noise from our
    # seeded generator, so results stay reproducible (A1111 calls it "DPM++ 2M SDE Karras").
    "dpm++sde-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M SDE Karras",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}


def scheduler_names() -> list[str]:
    """The friendly names accepted by `--scheduler`, in display order."""
    return list(SCHEDULERS)


def a1111_sampler_name(friendly: str | None, class_name: str) -> str:
    """The sampler label A1111-compatible tools expect, for a friendly name or a model default."""
    if friendly in SCHEDULERS:
        return SCHEDULERS[friendly].a1111_name
    for spec in SCHEDULERS.values():
        if spec.class_name == class_name and not spec.overrides:
            return spec.a1111_name
    return class_name.removesuffix("Scheduler")


def max_steps(config) -> int | None:
    """The most denoising steps a scheduler with this config can take (None: its config says no limit).

    Past `num_train_timesteps` the schedule would repeat or skip timesteps (DDIM, DDPM and LCM raise,
    Euler and friends silently draw with duplicated timesteps); LCM and TCD also pick their steps from
    an `original_inference_steps`-long schedule.
    """
    limits = [config.get(key) for key in ("num_train_timesteps", "original_inference_steps")]
    limits = [int(v) for v in limits if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(limits) if limits else None


def check_steps(config, steps: int) -> None:
    """Refuse more steps than the scheduler (given by its config) was trained for, before any image is drawn."""
    from dreamcli.errors import InputError

    limit = max_steps(config)
    if limit is not None and steps > limit:
        name = str(config.get("_class_name") or "the scheduler").removesuffix("Scheduler")
        raise InputError(
            f"steps {steps} is more than this model's {name} scheduler can take ({limit}): use --steps {limit} or fewer"
        )
