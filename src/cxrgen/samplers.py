"""Samplers by name: diffusers schedulers built from the training schedule's config.

Every sampler is ``<SchedulerClass>.from_config(training_config)`` so it shares the training betas,
timestep count and prediction type; diffusers does the step math, cxrgen never re-implements it.

Two families, never mixed: a DDPM-trained model (its training scheduler a ``DDPMScheduler``) samples
with ddpm / ddim / pndm / dpm++ / euler; a rectified-flow model (``FlowMatchEulerDiscreteScheduler``,
objective.kind=flow) with flow-euler / flow-heun / flow-dpm++. In the flow family the denoiser's time
input is ``t = sigma * num_train_timesteps`` (diffusers' ``scheduler.timesteps``), sigma in (0, 1] the
noise share of x_sigma = (1 - sigma) x0 + sigma eps; training feeds the same t = s * T.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from cxrgen.config.models import PREDICTION_TYPES
from cxrgen.config.sampling import FLOW_SAMPLER_NAMES, SAMPLER_NAMES
from cxrgen.config.training import ScheduleConfig
from cxrgen.errors import ConfigError

#: Where the inference timesteps sit. "trailing" starts at the last training step, so the first step
#: sees pure noise as the initial latent is (Lin et al. 2024, "Common diffusion noise schedules and
#: sample steps are flawed", sec. 3.3); DDPM, DPM-Solver++ and Euler step to the next listed timestep.
TRAILING: dict[str, Any] = {"timestep_spacing": "trailing"}
#: DDIM and PNDM in diffusers step by a fixed stride num_train_timesteps // steps, which only matches
#: evenly spaced timesteps: Stable Diffusion's "leading" spacing with offset 1 (RoentGen used it too).
#: ``set_alpha_to_one``: the last step lands on clean data (alpha_bar = 1), not on the t = 0 noise level.
EVEN_STRIDE: dict[str, Any] = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": True}

#: Sampler name -> (diffusers scheduler class, config overrides on top of the training config).
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, TRAILING),  # ancestral sampling (Ho et al. 2020, alg. 2)
    "ddim": (DDIMScheduler, EVEN_STRIDE),  # deterministic, eta = 0 (Song et al. 2021, eq. 12)
    "pndm": (PNDMScheduler, {**EVEN_STRIDE, "skip_prk_steps": True}),  # PLMS (Liu et al. 2022); RoentGen
    "dpm++": (DPMSolverMultistepScheduler, {**TRAILING, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, TRAILING),  # Karras et al. 2022, alg. 2 (deterministic Euler)
    # rectified flow: sigmas from 1 (pure noise) down, t = sigma * T; the model output is dx/dsigma = eps - x0
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),  # Euler on the flow ODE (SD3, Esser et al. 2024)
    "flow-heun": (FlowMatchHeunDiscreteScheduler, {}),  # Heun (Karras et al. 2022, alg. 1): 2 evaluations a step
    "flow-dpm++": (DPMSolverMultistepScheduler, {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                                 "algorithm_type": "dpmsolver++", "solver_order": 2}),
}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "cxrgen.config.SAMPLER_NAMES and SAMPLERS must agree"
#: The training schedulers of rectified-flow models (what a saved flow model's scheduler/ folder holds).
FLOW_SCHEDULERS = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)


def is_flow(scheduler: Mapping[str, Any] | SchedulerMixin) -> bool:
    """Whether a training scheduler (or its config) is a rectified-flow one rather than a DDPM one."""
    if isinstance(scheduler, SchedulerMixin):
        return isinstance(scheduler, FLOW_SCHEDULERS)
    config = dict(scheduler)
    return config.get("_class_name") in {cls.__name__ for cls in FLOW_SCHEDULERS} or (
        "shift" in config and "beta_start" not in config)  # a flow config without its class name


def scheduler_prediction_type(scheduler: Mapping[str, Any] | SchedulerMixin) -> str:
    """The target a training scheduler implies: flow_prediction for a flow one, else its prediction_type."""
    if is_flow(scheduler):
        return "flow_prediction"
    config = scheduler.config if isinstance(scheduler, SchedulerMixin) else scheduler
    return dict(config).get("prediction_type", "epsilon")


def training_scheduler(schedule: ScheduleConfig, prediction_type: str, objective: str = "ddpm") -> SchedulerMixin:
    """The scheduler of training: DDPM (``add_noise``, targets) or, for objective "flow", the flow one.

    Samplers are made from its config; it is saved as the model's scheduler/ folder.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type={prediction_type!r}: use one of {list(PREDICTION_TYPES)}")
    if (objective == "flow") != (prediction_type == "flow_prediction"):
        raise ConfigError(f"objective.kind={objective} with denoiser prediction_type={prediction_type!r}: a flow "
                          "objective trains the velocity and only it: set model.denoiser.prediction_type="
                          "flow_prediction together with objective.kind=flow (and neither otherwise)")
    if objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=schedule.num_train_timesteps, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_schedule=schedule.beta_schedule,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        prediction_type=prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]
    )


def make_scheduler(name: str, config: Mapping[str, Any] | SchedulerMixin) -> SchedulerMixin:
    """A fresh sampler ``name`` (one of SAMPLER_NAMES) sharing the betas of the training ``config``."""
    if name not in SAMPLERS:
        raise ConfigError(f"sampler {name!r} is unknown: use one of {list(SAMPLERS)}")
    flow = is_flow(config)
    if flow != (name in FLOW_SAMPLER_NAMES):
        kind = "rectified-flow" if flow else "DDPM"
        usable = [n for n in SAMPLERS if (n in FLOW_SAMPLER_NAMES) == flow]
        raise ConfigError(f"sampler {name!r} cannot sample this {kind} model: use one of {usable}")
    if isinstance(config, SchedulerMixin):
        config = config.config
    if flow and name == "flow-dpm++":  # DPM-Solver++ on flow sigmas, shifted as the training scheduler says
        return DPMSolverMultistepScheduler(num_train_timesteps=config["num_train_timesteps"],
                                           flow_shift=dict(config).get("shift", 1.0), **SAMPLERS[name][1])
    predicts = dict(config).get("prediction_type", "epsilon")
    if name == "pndm" and predicts not in ("epsilon", "v_prediction"):
        raise ConfigError(f"the pndm sampler needs an epsilon or v_prediction model; this one predicts "
                          f"{predicts!r}: use ddim, dpm++, euler or ddpm")
    cls, overrides = SAMPLERS[name]
    return cls.from_config(dict(config), **overrides)
