"""Config of sampling: which diffusers scheduler, how many steps, how much guidance."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrgen.errors import ConfigError

#: Samplers of DDPM-trained models (objective.kind=ddpm); each maps to a diffusers scheduler (cxrgen.samplers).
DDPM_SAMPLER_NAMES = ("ddpm", "ddim", "pndm", "dpm++", "euler")
#: Samplers of rectified-flow models (objective.kind=flow): the ODE dx/dsigma = v by Euler, Heun or DPM-Solver++.
FLOW_SAMPLER_NAMES = ("flow-euler", "flow-heun", "flow-dpm++")
#: Sampler names cxrgen knows.
SAMPLER_NAMES = DDPM_SAMPLER_NAMES + FLOW_SAMPLER_NAMES


@dataclass(frozen=True)
class SamplingConfig:
    """How images are sampled (RoentGen: PNDM, 75 steps, guidance 4)."""

    sampler: str = "dpm++"  # ddpm | ddim | pndm | dpm++ (DPM-Solver++ multistep) | euler; flow-euler | flow-heun | flow-dpm++
    steps: int = 25
    guidance_scale: float = 4.0  # classifier-free guidance w; 1 = no guidance
    negative_prompt: str | None = None  # None: the text encoder's null prompt
    num_images_per_prompt: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLER_NAMES:
            raise ConfigError(f"sampling.sampler={self.sampler!r}: use one of {list(SAMPLER_NAMES)}")
        if self.steps < 1 or self.num_images_per_prompt < 1:
            raise ConfigError("sampling.steps and sampling.num_images_per_prompt must be >= 1")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ConfigError(f"sampling.guidance_scale={self.guidance_scale}: give a finite value >= 0 "
                              "(--guidance; 1 = no guidance)")
