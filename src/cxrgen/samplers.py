"""Samplers by name: diffusers schedulers built from the training schedule's config.

Every sampler is ``<SchedulerClass>.from_config(training_config)`` so it shares the training betas,
timestep count and prediction type; diffusers does the step math, cxrgen never re-implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from cxrgen.config.models import PREDICTION_TYPES
from cxrgen.config.sampling import SAMPLER_NAMES
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
}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "cxrgen.config.SAMPLER_NAMES and SAMPLERS must agree"


def training_scheduler(schedule: ScheduleConfig, prediction_type: str) -> DDPMScheduler:
    """The DDPM scheduler of training (``add_noise``, targets); samplers are made from its config."""
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type={prediction_type!r}: use one of {list(PREDICTION_TYPES)}")
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
    if isinstance(config, SchedulerMixin):
        config = config.config
    predicts = dict(config).get("prediction_type", "epsilon")
    if name == "pndm" and predicts not in ("epsilon", "v_prediction"):
        raise ConfigError(f"the pndm sampler needs an epsilon or v_prediction model; this one predicts "
                          f"{predicts!r}: use ddim, dpm++, euler or ddpm")
    cls, overrides = SAMPLERS[name]
    return cls.from_config(dict(config), **overrides)
