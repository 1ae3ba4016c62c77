"""The RoentGen denoiser: diffusers' ``UNet2DConditionModel`` behind ``denoiser(z_t, t, context, mask)``.

Stable Diffusion 1.x layout (Rombach et al., CVPR 2022, App. E): cross-attention in every level but
the deepest, and in the middle block; the text mask becomes diffusers' ``encoder_attention_mask``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from cxrgen.config import DenoiserConfig, load_config, save_config
from cxrgen.denoisers.base import CONFIG_NAME, check_inputs, prepare_timesteps
from cxrgen.errors import ConfigError
from cxrgen.hub import load_pretrained

logger = logging.getLogger(__name__)

PRETRAINED_SUBFOLDER = "unet"  # where a Stable Diffusion repo or folder keeps its U-Net


def validate_unet_config(cfg: DenoiserConfig) -> None:
    """Raise ConfigError for a U-Net config that could not run (checked at construction)."""
    needed = ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups")
    missing = [k for k in needed if getattr(cfg, k) is None]
    if missing:
        raise ConfigError(f"U-Net config lacks {missing}: build it with cxrgen.denoisers.build_denoiser")
    channels = cfg.block_out_channels
    if len(channels) < 2:
        raise ConfigError(f"denoiser.block_out_channels={channels}: give at least two levels")
    factor = 2 ** (len(channels) - 1)
    if cfg.sample_size % factor:
        raise ConfigError(
            f"denoiser.sample_size={cfg.sample_size} is not divisible by {factor}, the U-Net's "
            f"downsampling over {len(channels)} levels: use a multiple of {factor} or fewer levels"
        )
    for c in channels:
        if c % cfg.norm_num_groups:
            raise ConfigError(f"denoiser.norm_num_groups={cfg.norm_num_groups} does not divide channels {c}")
        if c % cfg.attention_head_dim:
            raise ConfigError(
                f"denoiser.attention_head_dim={cfg.attention_head_dim} (SD 1.x: head count) "
                f"does not divide channels {c}"
            )


def unet_kwargs(cfg: DenoiserConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments for a resolved config (SD 1.x block layout)."""
    levels = len(cfg.block_out_channels)
    return dict(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.context_dim,
    )


def load_pretrained_unet(id_or_path: str) -> UNet2DConditionModel:
    """Load a U-Net by hub id or local folder (an SD folder with ``unet/`` or a U-Net folder itself)."""
    local = Path(id_or_path).expanduser()
    if local.is_dir():
        subfolder = None if (local / "config.json").is_file() else PRETRAINED_SUBFOLDER
        source = str(local)
    elif id_or_path.startswith((".", "/", "~")) or id_or_path.count("/") > 1:
        raise ConfigError(f"denoiser.pretrained={id_or_path!r} is not a folder: give an existing path or hub id")
    else:
        subfolder, source = PRETRAINED_SUBFOLDER, id_or_path
    return load_pretrained(UNet2DConditionModel, source, subfolder, "a U-Net",
                           "Give a local folder holding unet/config.json and its safetensors (no pickled "
                           ".bin), or a hub id you can reach.")


def config_from_unet(cfg: DenoiserConfig, unet: UNet2DConditionModel) -> DenoiserConfig:
    """``cfg`` with the architecture fields read back from a loaded U-Net; mismatched widths are errors."""
    ucfg = unet.config
    if ucfg.in_channels != cfg.in_channels or ucfg.cross_attention_dim != cfg.context_dim:
        raise ConfigError(
            f"loaded U-Net has in_channels={ucfg.in_channels}, cross_attention_dim="
            f"{ucfg.cross_attention_dim}; set denoiser.in_channels and denoiser.context_dim to match"
        )
    return dataclasses.replace(
        cfg,
        block_out_channels=tuple(ucfg.block_out_channels),
        layers_per_block=ucfg.layers_per_block,
        attention_head_dim=ucfg.attention_head_dim,
        norm_num_groups=ucfg.norm_num_groups,
    )


class UNetDenoiser(nn.Module):
    """A conditional U-Net: ``unet(z_t, t, context, mask) -> prediction`` of shape (B, C, h, w)."""

    def __init__(self, cfg: DenoiserConfig, unet: UNet2DConditionModel | None = None) -> None:
        super().__init__()
        if unet is None:
            validate_unet_config(cfg)
            unet = UNet2DConditionModel(**unet_kwargs(cfg))
        else:
            cfg = config_from_unet(cfg, unet)
        self.config = cfg
        self.prediction_type = cfg.prediction_type
        self.unet = unet

    @classmethod
    def from_config(cls, cfg: DenoiserConfig) -> UNetDenoiser:
        """Random init, or the weights named by ``cfg.pretrained`` (hub id or local path)."""
        if cfg.pretrained is None:
            return cls(cfg)
        logger.info("loading U-Net weights from %s", cfg.pretrained)
        return cls(cfg, load_pretrained_unet(cfg.pretrained))

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor | int | float,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict (B, C, h, w) from latents (B, C, h, w), t (B,), context (B, L, D_text), mask (B, L)."""
        mask = check_inputs(self.config, z_t, context, mask)
        t = prepare_timesteps(t, z_t.shape[0], z_t.device)
        out = self.unet(
            z_t, t, encoder_hidden_states=context, encoder_attention_mask=mask, return_dict=False
        )
        return out[0]

    def save_pretrained(self, directory: str | Path) -> Path:
        """diffusers' config.json + safetensors, and the resolved DenoiserConfig beside them."""
        directory = Path(directory)
        self.unet.save_pretrained(directory, safe_serialization=True)
        save_config(dataclasses.replace(self.config, pretrained=None), directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> UNetDenoiser:
        """Load a U-Net denoiser written by ``save_pretrained``."""
        directory = Path(directory)
        cfg = load_config(DenoiserConfig, directory / CONFIG_NAME)
        return cls(cfg, UNet2DConditionModel.from_pretrained(str(directory), use_safetensors=True))
