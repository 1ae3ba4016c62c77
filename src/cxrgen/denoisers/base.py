"""What every denoiser shares: the input checks of ``denoiser(z_t, t, context, mask)`` and its spec."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrgen.errors import ConfigError


@dataclass(frozen=True)
class DenoiserSpec:
    """What the other parts must match: latent channels and side, text width and length, target."""

    in_channels: int  # latent channels C
    sample_size: int  # latent side h = w
    context_dim: int  # text token width D_text
    context_len: int | None  # most text tokens (None: any number)
    prediction_type: str | None  # epsilon | v_prediction | sample (None: the scheduler's)


def prepare_timesteps(t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a (B,) tensor: a scalar is broadcast; int and float values are both kept."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)  # (B,)
    if t.shape != (batch,):
        raise ConfigError(f"timesteps of shape {tuple(t.shape)}: give one per sample, shape ({batch},)")
    return t


def check_inputs(
    spec: DenoiserSpec, z_t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Check shapes against the spec; return the mask as bool (True = real token) or None."""
    if z_t.ndim != 4 or z_t.shape[1] != spec.in_channels:
        raise ConfigError(
            f"latents of shape {tuple(z_t.shape)}: expected (B, {spec.in_channels}, h, w); "
            "check denoiser.in_channels against the autoencoder's latent channels"
        )
    batch = z_t.shape[0]
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != spec.context_dim:
        raise ConfigError(
            f"context of shape {tuple(context.shape)}: expected ({batch}, L, {spec.context_dim}); "
            "set denoiser.context_dim to the text encoder's width"
        )
    if mask is None:
        return None
    if mask.shape != context.shape[:2]:
        raise ConfigError(f"mask of shape {tuple(mask.shape)}: expected {tuple(context.shape[:2])}")
    return mask.bool()
