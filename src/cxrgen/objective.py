"""The diffusion objective on one batch (pure): sample t and noise, noise the latent, (weighted) MSE to the target.

RoentGen (Chambon et al. 2022) eq. 1-3, i.e. the simplified DDPM loss of Ho et al. 2020, eq. 14:
L = E_{z0, c, eps ~ N(0, I), t ~ U{0..T-1}} || eps - eps_theta(z_t, t, c) ||^2 with
z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (``scheduler.add_noise``). For v-prediction
(Salimans & Ho 2022, sec. 4) the target is v = sqrt(abar_t) eps - sqrt(1 - abar_t) z0
(``scheduler.get_velocity``); for "sample" it is z0 itself. Classifier-free guidance training
(Ho & Salimans 2022, Algorithm 1) replaces the text by the null prompt with probability p.

Configurable (``cxrgen.config.ObjectiveConfig``):
- rectified flow (Esser et al. 2024, SD3, eq. 2-3 and sec. 3.1): z_s = (1 - s) z0 + s eps, target
  v = eps - z0, s ~ logit-normal (sec. 3.1, "lognorm(m, s)") or U(0, 1); the denoiser sees t = s * T,
  as diffusers' flow schedulers pass ``timesteps = sigmas * num_train_timesteps`` when sampling;
- Min-SNR-gamma (Hang et al. 2023, eq. 8 and sec. 3.4): per-sample weights min(SNR, gamma) / SNR
  (epsilon), min(SNR, gamma) / (SNR + 1) (v) and min(SNR, gamma) (x0), SNR = abar / (1 - abar);
- MaskDiT-style token dropping (Zheng et al. 2023, sec. 3): a U-ViT sees a random ``1 - mask_ratio``
  share of its patch tokens (the same set in every block, so its long skips stay aligned) and the
  loss covers the kept patches only; a ``1 - masked_fraction`` share of micro-batches is unmasked.

Draws from the generator, always in this order: t (or s) (B,), eps (B, C, h, w); with mask_ratio > 0
then one U(0, 1) (is this micro-batch masked?) and (B, N) U(0, 1) scores (which tokens are kept),
drawn whether or not the micro-batch is masked, so a resumed run replays the same stream.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from cxrgen.config import PREDICTION_TYPES, ObjectiveConfig
from cxrgen.errors import ConfigError
from cxrgen.samplers import is_flow


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, shape (B,) long, drawn on the generator's device."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=generator.device)


def sample_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """eps ~ N(0, I) shaped like ``like``, drawn from ``generator`` (then moved to ``like``'s device)."""
    eps = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


def sample_flow_sigmas(batch: int, objective: ObjectiveConfig, generator: torch.Generator) -> torch.Tensor:
    """s in (0, 1), shape (B,): sigmoid(m + std * n), n ~ N(0, 1) (SD3 sec. 3.1), or U(0, 1)."""
    if objective.timestep_sampling == "logit_normal":
        n = torch.randn((batch,), generator=generator, device=generator.device)
        return torch.sigmoid(objective.logit_mean + objective.logit_std * n)
    return torch.rand((batch,), generator=generator, device=generator.device)


def sample_training_timesteps(scheduler: SchedulerMixin, batch: int, objective: ObjectiveConfig,
                              generator: torch.Generator) -> torch.Tensor:
    """The denoiser's t (B,): integer DDPM steps, or s * T (float) for a flow scheduler."""
    steps = scheduler.config.num_train_timesteps
    if is_flow(scheduler):
        return sample_flow_sigmas(batch, objective, generator) * steps  # (B,) float in (0, T)
    return sample_timesteps(batch, steps, generator)


def noise_latents(scheduler: SchedulerMixin, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t: DDPM ``add_noise``, or the flow interpolation (1 - s) z0 + s eps with s = t / T (SD3 eq. 3)."""
    if not is_flow(scheduler):
        return scheduler.add_noise(z0, eps, t)
    s = (t.float() / scheduler.config.num_train_timesteps).to(z0.device)[:, None, None, None]  # (B, 1, 1, 1)
    return ((1 - s) * z0.float() + s * eps.float()).to(z0.dtype)


def diffusion_target(
    scheduler: SchedulerMixin, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the denoiser should predict: eps, v = sqrt(abar) eps - sqrt(1 - abar) z0, z0, or flow eps - z0."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(z0, eps, t)
    if prediction_type == "sample":
        return z0
    if prediction_type == "flow_prediction":
        return eps - z0  # d z_s / d s of z_s = (1 - s) z0 + s eps (rectified flow)
    raise ConfigError(f"prediction_type={prediction_type!r}: use one of {list(PREDICTION_TYPES)}")


def snr(scheduler: SchedulerMixin, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t), shape (B,), of a DDPM scheduler at integer steps t."""
    abar = scheduler.alphas_cumprod.to(torch.float64)[t.cpu().long()]  # (B,)
    return (abar / (1 - abar)).float().to(t.device)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) for the target (Hang et al. 2023): the x0 weight min(SNR, gamma)
    expressed in eps-space (/ SNR) or v-space (/ (SNR + 1))."""
    clamped = snr_t.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clamped / snr_t
    if prediction_type == "v_prediction":
        return clamped / (snr_t + 1)
    if prediction_type == "sample":
        return clamped
    raise ConfigError(f"loss_weighting=min_snr needs an epsilon, v_prediction or sample target, "
                      f"not {prediction_type!r}")


def draw_token_keep(batch: int, n_tokens: int, objective: ObjectiveConfig,
                    generator: torch.Generator) -> torch.Tensor | None:
    """Indices (B, N_keep) of the patch tokens kept in this micro-batch, sorted; None when it is unmasked."""
    masked = torch.rand((1,), generator=generator, device=generator.device).item() < objective.masked_fraction
    scores = torch.rand((batch, n_tokens), generator=generator, device=generator.device)  # (B, N)
    if not masked:
        return None
    n_keep = max(1, round(n_tokens * (1 - objective.mask_ratio)))
    return scores.argsort(dim=1)[:, :n_keep].sort(dim=1).values  # (B, N_keep)


def kept_pixels(keep: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """(B, 1, grid*patch, grid*patch) float mask, 1 on the latent pixels of the kept patch tokens."""
    tokens = torch.zeros(keep.shape[0], grid * grid, device=keep.device)  # (B, N)
    tokens.scatter_(1, keep, 1.0)
    cells = tokens.reshape(-1, 1, grid, grid)  # (B, 1, grid, grid), row-major like the patch tokens
    return cells.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)  # (B, 1, h, w)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
    """MSE per sample (B,), over all elements or only where ``pixels`` (B, 1, h, w) is 1."""
    err = (pred.float() - target.float()) ** 2  # (B, C, h, w)
    if pixels is None:
        return err.flatten(1).mean(1)
    return (err * pixels).flatten(1).sum(1) / (pixels.flatten(1).sum(1) * err.shape[1])


def check_objective(objective: ObjectiveConfig, denoiser: nn.Module) -> None:
    """ConfigError when the denoiser cannot train under ``objective`` (token masking needs a U-ViT)."""
    net = getattr(denoiser, "module", denoiser)
    if objective.mask_ratio > 0 and "keep" not in inspect.signature(net.forward).parameters:
        raise ConfigError(f"objective.mask_ratio={objective.mask_ratio} drops patch tokens, which a "
                          f"{type(net).__name__} has none of: use a U-ViT denoiser or objective.mask_ratio=0")


def diffusion_loss(
    denoiser: nn.Module,
    scheduler: SchedulerMixin,
    z0: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator,
    prediction_type: str | None = None,
    objective: ObjectiveConfig | None = None,
) -> torch.Tensor:
    """Scalar (weighted) MSE between ``denoiser(z_t, t, context, mask)`` and its target (RoentGen eq. 1-3).

    Draws t (or s), eps, then the token mask from ``generator`` in that order (module docstring), so
    a run is reproducible from the generator state. ``prediction_type`` defaults to the denoiser's;
    ``objective`` (None: plain DDPM) picks flow / Min-SNR / token masking.
    """
    objective = objective or ObjectiveConfig()
    kind = prediction_type or getattr(denoiser, "prediction_type", "epsilon")
    t = sample_training_timesteps(scheduler, z0.shape[0], objective, generator).to(z0.device)  # (B,)
    eps = sample_noise(z0, generator)  # (B, C, h, w)
    z_t = noise_latents(scheduler, z0, eps, t)  # (B, C, h, w)
    target = diffusion_target(scheduler, z0, eps, t, kind)
    keep, pixels = None, None
    if objective.mask_ratio > 0:
        net = getattr(denoiser, "module", denoiser)  # DDP-wrapped or plain
        keep = draw_token_keep(z0.shape[0], net.grid**2, objective, generator)
        if keep is not None:
            keep = keep.to(z0.device)
            pixels = kept_pixels(keep, net.grid, net.config.patch_size)  # (B, 1, h, w)
    pred = denoiser(z_t, t, context, mask) if keep is None else denoiser(z_t, t, context, mask, keep=keep)
    if objective.loss_weighting == "none" and pixels is None:
        return F.mse_loss(pred.float(), target.float())  # exactly the plain loss when nothing is on
    losses = per_sample_mse(pred, target, pixels)  # (B,)
    if objective.loss_weighting == "min_snr":
        losses = losses * min_snr_weights(snr(scheduler, t), objective.min_snr_gamma, kind)
    return losses.mean()


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
