"""Friendly scheduler names, their diffusers classes and their A1111 sampler names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerSpec:
    """One friendly name: the diffusers class, config overrides, the A1111 label, and which models it fits."""

    class_name: str
    a1111_name: str
    overrides: dict = field(default_factory=dict)
    kind: str = "discrete"  # "discrete": for DDPM-trained models; "flow": for flow-matching ones (SD3, Flux)
    scales_input: bool = False  # needs scale_model_input, which Kandinsky's pipelines never call
    only: tuple[str, ...] = ()  # families it is limited to, where a pipeline needs what others lack

    def fits(self, family) -> bool:
        """True when this sampler can run a model of this family (a families.Family)."""
        if self.only and family.name not in self.only:
            return False
        return self.kind == family.schedulers and not (self.scales_input and family.skips_input_scaling)

    def config_overrides(self, base: dict) -> dict:
        """Overrides for from_config on the model's own scheduler config: flow samplers of the multistep
        classes take the model's shift under another name."""
        if self.kind == "flow" and "flow_shift" in self.overrides:
            return {**self.overrides, "flow_shift": float(base.get("shift", 1.0))}
        return self.overrides


# Kept free of torch/diffusers imports so that `--scheduler list` and flag validation stay instant.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS", scales_input=True),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler", scales_input=True),
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a", scales_input=True),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun", scales_input=True),
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
    # Flow matching (SD3, Flux): the model's own shift carries over; "flow-euler" is their default sampler.
    "flow-euler": SchedulerSpec("FlowMatchEulerDiscreteScheduler", "Euler", kind="flow"),
    "flow-euler-karras": SchedulerSpec(
        "FlowMatchEulerDiscreteScheduler", "Euler Karras", {"use_karras_sigmas": True}, kind="flow"
    ),
    "flow-euler-beta": SchedulerSpec(
        "FlowMatchEulerDiscreteScheduler", "Euler Beta", {"use_beta_sigmas": True}, kind="flow"
    ),
    "flow-heun": SchedulerSpec("FlowMatchHeunDiscreteScheduler", "Heun", kind="flow", only=("sd3",)),
    "flow-dpm++2m": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}, kind="flow",
        only=("sd3",),
    ),
    "flow-unipc": SchedulerSpec(
        "UniPCMultistepScheduler", "UniPC",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 1.0}, kind="flow",
    ),
}


def scheduler_names() -> list[str]:
    """The friendly names accepted by `--scheduler`, in display order."""
    return list(SCHEDULERS)


def fitting_families(name: str) -> list[str]:
    """Names of the families a sampler fits, in display order (for `--scheduler list`)."""
    from dreamcli import families

    return [family for family in families.DISPLAY_ORDER if SCHEDULERS[name].fits(families.get(family))]


def check_fits(name: str, family) -> None:
    """Refuse a sampler that cannot run this family's models (a flow sampler on SD 1.x, Euler on SD3, ...)."""
    from dreamcli import families
    from dreamcli.errors import InputError

    if not SCHEDULERS[name].fits(family):
        usable = [n for n in SCHEDULERS if SCHEDULERS[n].fits(family)]
        fits = ", ".join(families.label(f) for f in fitting_families(name))
        raise InputError(
            f"scheduler {name} does not fit {family.label} models (it fits {fits}): use one of {', '.join(usable)}, "
            "or leave --scheduler out"
        )


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
