"""The sanity ladder made of real models: the issue's ladder, with model samples, not hand-made degradations.

From best to worst (each a set of images for the prompts of real held-out images):

0. ``heldout``: the real held-out images;
1. ``blur_noise``: the same images blurred and with added noise (``ladder.blur_noise``);
2. ``default_model``: samples of the model (the packaged default when none is given);
3. ``barely_trained``: samples of a barely trained model, e.g. the same model's own recipe run for a
   few dozen steps from a freshly initialised denoiser (``cxrgen.train.short_run.train_from_scratch``;
   evaluation never imports training, so the caller trains it);
4. ``noise``: uniform noise in [-1, 1].

Both models sample with the same sampler, number of steps, guidance and per-image seeds.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from cxrgen.config import SamplingConfig
from cxrgen.errors import ConfigError
from cxrgen.evaluate.image_pairs import resize
from cxrgen.evaluate.ladder import blur_noise
from cxrgen.pipeline import CXRPipeline, load_pipeline

log = logging.getLogger(__name__)

MODEL_RUNGS = ("heldout", "blur_noise", "default_model", "barely_trained", "noise")


@dataclass(frozen=True)
class ModelLadderSettings:
    """How the model rungs are made: sampling of both models and the blur + noise rung."""

    sampler_steps: int | None = None  # steps of the model's own sampler for both models; None: the model's default
    blur_sigma: float = 1.5  # Gaussian blur in px at 64 px (scaled with the image size)
    noise_std: float = 0.03  # added Gaussian noise, in [-1, 1] units
    seed: int = 0  # image i of each model is seeded seed + i

    def __post_init__(self) -> None:
        if (self.sampler_steps is not None and self.sampler_steps < 1) or self.blur_sigma < 0 or self.noise_std < 0:
            raise ConfigError(f"{self}: sampler_steps must be >= 1, blur_sigma and noise_std >= 0")


def sample(pipe: CXRPipeline, prompts: list[str], size: int, seed: int, sampling: SamplingConfig | None = None,
           batch_size: int = 8) -> torch.Tensor:
    """One image per prompt (N, 1, size, size), image i seeded seed + i, with ``sampling`` (None: the pipeline's)."""
    cfg = dataclasses.replace(sampling or pipe.sampling, num_images_per_prompt=1)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out.append(resize(pipe.sample(chunk, cfg, gens, progress=False).images.float(), size))
    return torch.cat(out)


def model_rungs(model: str | None, barely_trained: CXRPipeline, heldout: torch.Tensor, prompts: list[str],
                generator: torch.Generator, settings: ModelLadderSettings = ModelLadderSettings()) -> dict[str, torch.Tensor]:
    """The five rungs (``MODEL_RUNGS``) for real held-out images (N, 1, S, S) and their prompts.

    ``model`` (None: the packaged default) is the well-trained rung, ``barely_trained`` the barely trained
    one; it samples with ``model``'s sampling settings (its own are left unchanged).
    """
    size, seed, steps = heldout.shape[-1], settings.seed, settings.sampler_steps
    default = load_pipeline(model, steps=steps)
    log.info("model ladder: sampling %d prompts from each model (%s sampler steps)", len(prompts), steps or "default")
    return {
        "heldout": heldout,
        "blur_noise": blur_noise(heldout, settings.blur_sigma, settings.noise_std, generator),
        "default_model": sample(default, prompts, size, seed),
        "barely_trained": sample(barely_trained, prompts, size, seed, default.sampling),  # the same settings
        "noise": torch.rand(heldout.shape, generator=generator) * 2 - 1,
    }
