"""The RoentGen denoiser: diffusers' ``UNet2DConditionModel`` behind ``denoiser(z_t, t, context, mask)``.

Stable Diffusion 1.x layout (Rombach et al., CVPR 2022, App. E): cross-attention in every level but
the deepest, and in the middle block; the text mask becomes diffusers' ``encoder_attention_mask``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from cxrgen.config import DenoiserConfig
from cxrgen.denoisers.base import DenoiserSpec, check_inputs, prepare_timesteps
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


def load_pretrained_unet(id_or_path: str) -> UNetDenoiser:
    """Load a U-Net by hub id or local folder (an SD folder with ``unet/`` or a U-Net folder itself)."""
    local = Path(id_or_path).expanduser()
    if local.is_dir():
        subfolder = None if (local / "config.json").is_file() else PRETRAINED_SUBFOLDER
        source = str(local)
    elif id_or_path.startswith((".", "/", "~")) or id_or_path.count("/") > 1:
        raise ConfigError(f"denoiser.pretrained={id_or_path!r} is not a folder: give an existing path or hub id")
    else:
        subfolder, source = PRETRAINED_SUBFOLDER, id_or_path
    return load_pretrained(UNetDenoiser, source, subfolder, "a U-Net",
                           "Give a local folder holding unet/config.json and its safetensors (no pickled "
                           ".bin), or a hub id you can reach.")


class UNetDenoiser(UNet2DConditionModel):
    """diffusers' conditional U-Net called as ``unet(z_t, t, context, mask) -> prediction`` (B, C, h, w).

    Its config.json is a plain ``UNet2DConditionModel`` config: ``UNet2DConditionModel.from_pretrained``
    reads the saved folder too. The training target is the scheduler's (``prediction_type``).
    """

    prediction_type: str | None = None  # set from the training config; saved in the scheduler's config

    @classmethod
    def from_denoiser_config(cls, cfg: DenoiserConfig) -> UNetDenoiser:
        """Random init, or the weights named by ``cfg.pretrained`` (hub id or local path)."""
        if cfg.pretrained is None:
            validate_unet_config(cfg)
            model = cls(**unet_kwargs(cfg))
        else:
            logger.info("loading U-Net weights from %s", cfg.pretrained)
            model = load_pretrained_unet(cfg.pretrained)
            ucfg = model.config
            if ucfg.in_channels != cfg.in_channels or ucfg.cross_attention_dim != cfg.context_dim:
                raise ConfigError(
                    f"loaded U-Net has in_channels={ucfg.in_channels}, cross_attention_dim="
                    f"{ucfg.cross_attention_dim}; set denoiser.in_channels and denoiser.context_dim to match"
                )
        model.prediction_type = cfg.prediction_type
        return model

    @property
    def spec(self) -> DenoiserSpec:
        """Latent shape and text width (any text length); the target is the scheduler's unless set."""
        c = self.config
        return DenoiserSpec(c.in_channels, c.sample_size, c.cross_attention_dim, None, self.prediction_type)

    def forward(  # type: ignore[override]  # cxrgen's denoiser signature
        self,
        z_t: torch.Tensor,
        t: torch.Tensor | int | float,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict (B, C, h, w) from latents (B, C, h, w), t (B,), context (B, L, D_text), mask (B, L)."""
        mask = check_inputs(self.spec, z_t, context, mask)
        t = prepare_timesteps(t, z_t.shape[0], z_t.device)
        out = super().forward(z_t, t, encoder_hidden_states=context, encoder_attention_mask=mask, return_dict=False)
        return out[0]
