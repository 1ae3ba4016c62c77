"""What every denoiser shares: the input checks of ``denoiser(z_t, t, context, mask)`` and file names."""

from __future__ import annotations

import torch

from cxrgen.config import DenoiserConfig
from cxrgen.errors import ConfigError

CONFIG_NAME = "denoiser_config.yaml"  # the resolved DenoiserConfig, saved beside the weights
WEIGHTS_NAME = "model.safetensors"  # U-ViT weights (the U-Net uses diffusers' own file name)


def prepare_timesteps(t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a (B,) tensor: a scalar is broadcast; int and float values are both kept."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)  # (B,)
    if t.shape != (batch,):
        raise ConfigError(f"timesteps of shape {tuple(t.shape)}: give one per sample, shape ({batch},)")
    return t


def check_inputs(
    cfg: DenoiserConfig, z_t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Check shapes against the config; return the mask as bool (True = real token) or None."""
    if z_t.ndim != 4 or z_t.shape[1] != cfg.in_channels:
        raise ConfigError(
            f"latents of shape {tuple(z_t.shape)}: expected (B, {cfg.in_channels}, h, w); "
            "check denoiser.in_channels against the autoencoder's latent channels"
        )
    batch = z_t.shape[0]
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.context_dim:
        raise ConfigError(
            f"context of shape {tuple(context.shape)}: expected ({batch}, L, {cfg.context_dim}); "
            "set denoiser.context_dim to the text encoder's width"
        )
    if mask is None:
        return None
    if mask.shape != context.shape[:2]:
        raise ConfigError(f"mask of shape {tuple(mask.shape)}: expected {tuple(context.shape[:2])}")
    return mask.bool()
