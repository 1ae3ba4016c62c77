"""The diffusion objective on one batch (pure): sample t and noise, noise the latent, MSE to the target.

RoentGen (Chambon et al. 2022) eq. 1-3, i.e. the simplified DDPM loss of Ho et al. 2020, eq. 14:
L = E_{z0, c, eps ~ N(0, I), t ~ U{0..T-1}} || eps - eps_theta(z_t, t, c) ||^2 with
z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (``scheduler.add_noise``). For v-prediction
(Salimans & Ho 2022, sec. 4) the target is v = sqrt(abar_t) eps - sqrt(1 - abar_t) z0
(``scheduler.get_velocity``); for "sample" it is z0 itself. Classifier-free guidance training
(Ho & Salimans 2022, Algorithm 1) replaces the text by the null prompt with probability p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from cxrgen.config import PREDICTION_TYPES
from cxrgen.errors import ConfigError


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, shape (B,) long, drawn on the generator's device."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=generator.device)


def sample_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """eps ~ N(0, I) shaped like ``like``, drawn from ``generator`` (then moved to ``like``'s device)."""
    eps = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


def diffusion_target(
    scheduler: DDPMScheduler, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the denoiser should predict: eps, v = sqrt(abar) eps - sqrt(1 - abar) z0, or z0."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(z0, eps, t)
    if prediction_type == "sample":
        return z0
    raise ConfigError(f"prediction_type={prediction_type!r}: use one of {list(PREDICTION_TYPES)}")


def diffusion_loss(
    denoiser: nn.Module,
    scheduler: DDPMScheduler,
    z0: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """Scalar MSE between ``denoiser(z_t, t, context, mask)`` and its target (RoentGen eq. 1-3).

    Draws t, then eps, from ``generator`` (always in that order, so a run is reproducible from the
    generator state). ``prediction_type`` defaults to ``denoiser.prediction_type``.
    """
    kind = prediction_type or getattr(denoiser, "prediction_type", "epsilon")
    t = sample_timesteps(z0.shape[0], scheduler.config.num_train_timesteps, generator).to(z0.device)  # (B,)
    eps = sample_noise(z0, generator)  # (B, C, h, w)
    z_t = scheduler.add_noise(z0, eps, t)  # (B, C, h, w)
    pred = denoiser(z_t, t, context, mask)  # (B, C, h, w)
    target = diffusion_target(scheduler, z0, eps, t, kind)
    return F.mse_loss(pred.float(), target.float())


def cfg_drop_mask(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) bool, True where the text is replaced by the null prompt (each with probability ``p``).

    One uniform draw per sample whatever ``p`` is, so the generator advances the same for any p.
    """
    return torch.rand((batch,), generator=generator, device=generator.device) < p


def drop_prompts(prompts: Sequence[str], drop: torch.Tensor, null_prompt: str) -> list[str]:
    """The prompts with those flagged in ``drop`` (B,) replaced by ``null_prompt`` (a trainable encoder)."""
    return [null_prompt if bool(d) else p for p, d in zip(prompts, drop.tolist(), strict=True)]


def drop_context(
    context: torch.Tensor,
    mask: torch.Tensor,
    null_context: torch.Tensor,
    null_mask: torch.Tensor,
    drop: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of context (B, L, D) / mask (B, L) flagged in ``drop`` (B,) become the null ones (1, L, D)."""
    if null_context.shape[1:] != context.shape[1:]:
        raise ConfigError(
            f"null context {tuple(null_context.shape)} does not match context {tuple(context.shape)}: "
            "encode both with the same text encoder and text.pad_to_max_length=true"
        )
    d = drop.to(context.device)
    new_context = torch.where(d[:, None, None], null_context.to(context), context)  # (B, L, D)
    new_mask = torch.where(d[:, None], null_mask.to(mask.device, mask.dtype), mask)  # (B, L)
    return new_context, new_mask
