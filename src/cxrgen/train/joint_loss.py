"""The joint U-ViT's loss on one batch: each modality given, absent or noised, with its own timestep.

UniDiffuser (Bao et al. 2023, Sec. 3, eq. 5): draw t_x, t_y independently and regress the noise of
every modality jointly. Here each modality of each sample is independently *given* (clean, model time
0; probability ``given_prob``), *absent* (pure noise, model time T; ``absent_prob``) or *noised* at a
uniform step s of the training DDPM schedule (model time s + 1), so the conditionals at t = 0 and the
marginals at t = T that sampling uses are seen exactly, not only in the limit. The loss is the
noise-prediction MSE averaged over the noised (sample, modality) pairs; every sample has at least one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from cxrgen.denoisers.joint_uvit import GIVEN_TIME, JointUViT
from cxrgen.errors import ConfigError

GIVEN, ABSENT, NOISED = 0, 1, 2


@dataclass(frozen=True)
class Roles:
    """Per (sample, modality): role (B, M) in {GIVEN, ABSENT, NOISED} and scheduler step (B, M)."""

    role: torch.Tensor
    step: torch.Tensor


def draw_roles(batch: int, n_modalities: int, num_train_timesteps: int, given_prob: float, absent_prob: float,
               generator: torch.Generator | None = None) -> Roles:
    """Independent roles and steps per modality; a sample with nothing noised gets one modality noised."""
    if not (0 <= given_prob and 0 <= absent_prob and given_prob + absent_prob < 1):
        raise ConfigError(f"given_prob={given_prob}, absent_prob={absent_prob}: give shares >= 0 summing below 1")
    u = torch.rand(batch, n_modalities, generator=generator)  # (B, M)
    role = torch.full((batch, n_modalities), NOISED, dtype=torch.long)
    role[u < given_prob + absent_prob] = ABSENT
    role[u < given_prob] = GIVEN
    fix = torch.randint(0, n_modalities, (batch,), generator=generator)  # (B,) a modality to noise if none is
    none_noised = (role != NOISED).all(dim=1)  # (B,)
    role[none_noised, fix[none_noised]] = NOISED
    step = torch.randint(0, num_train_timesteps, (batch, n_modalities), generator=generator)  # (B, M)
    return Roles(role, step)


def prediction_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                      step: torch.Tensor) -> torch.Tensor:
    """What the denoiser regresses, by the scheduler's ``prediction_type``: the noise, x0 or v (Salimans & Ho 2022)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, step)
    raise ConfigError(f"prediction_type={kind!r}: use epsilon, sample or v_prediction")


def joint_loss(model: JointUViT, scheduler: DDPMScheduler, clean: Mapping[str, torch.Tensor], given_prob: float,
               absent_prob: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Prediction MSE (noise, or x0 / v by the scheduler's prediction_type) of ``model`` on clean latents of
    every modality; also the per-modality MSEs. Keys of ``clean`` that are no modality pass to the model as is."""
    names = model.modalities
    b = clean[names[0]].shape[0]
    device = clean[names[0]].device
    roles = draw_roles(b, len(names), scheduler.config.num_train_timesteps, given_prob, absent_prob, generator)
    # inputs the model reads beside the modalities (a report's text context) pass through unchanged
    inputs, times, targets = {k: v for k, v in clean.items() if k not in names}, {}, {}
    for j, m in enumerate(names):
        x0 = clean[m]
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        role = roles.role[:, j].to(device)  # (B,)
        step = roles.step[:, j].to(device)  # (B,)
        noisy = scheduler.add_noise(x0, noise, step)  # sqrt(abar_s) x0 + sqrt(1 - abar_s) eps (DDPM eq. 4)
        shape = (b,) + (1,) * (x0.ndim - 1)
        inputs[m] = torch.where((role == GIVEN).view(shape), x0, torch.where((role == ABSENT).view(shape), noise, noisy))
        times[m] = torch.where(role == GIVEN, GIVEN_TIME,
                               torch.where(role == ABSENT, model.absent_time, model.time_of(step)))
        targets[m] = prediction_target(scheduler, x0, noise, step)
    pred = model(inputs, times)
    total, count, per = 0.0, 0, {}
    for j, m in enumerate(names):
        noised = (roles.role[:, j] == NOISED).to(device)  # (B,)
        err = (pred[m].float() - targets[m].float()).pow(2).flatten(1).mean(dim=1)  # (B,)
        total = total + (err * noised).sum()
        count += int(noised.sum())
        if noised.any():
            per[m] = float(err[noised].detach().mean())
    return total / max(count, 1), per
