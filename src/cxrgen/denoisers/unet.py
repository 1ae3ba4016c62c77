"""The RoentGen denoiser: diffusers' ``UNet2DConditionModel`` behind ``denoiser(z_t, t, context, mask)``.

Stable Diffusion 1.x layout (Rombach et al., CVPR 2022, App. E): cross-attention in every level but
the deepest, and in the middle block; the text mask becomes diffusers' ``encoder_attention_mask``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from cxrgen.denoisers.base import DenoiserSpec, check_inputs, prepare_timesteps
from cxrgen.errors import ConfigError
from cxrgen.hub import load_pretrained

logger = logging.getLogger(__name__)

PRETRAINED_SUBFOLDER = "unet"  # where a Stable Diffusion repo or folder keeps its U-Net


def _plain(value: Any) -> Any:
    """Tuples as lists, so a config read from JSON compares equal to the one asked for."""
    return list(value) if isinstance(value, tuple) else value


def sd_block_layout(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with SD 1.x block types for its ``block_out_channels`` levels where none are given:
    cross-attention in every level but the deepest (and in the middle block)."""
    levels = len(kwargs.get("block_out_channels") or ())
    layout = {"down_block_types": ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
              "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)}
    return {**layout, **kwargs}


def validate_unet_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Raise ConfigError for U-Net constructor arguments that could not run (checked at construction)."""
    channels = tuple(kwargs["block_out_channels"])
    if len(channels) < 2:
        raise ConfigError(f"denoiser.kwargs.block_out_channels={list(channels)}: give at least two levels")
    factor = 2 ** (len(channels) - 1)
    if kwargs["sample_size"] % factor:
        raise ConfigError(
            f"denoiser.sample_size={kwargs['sample_size']} is not divisible by {factor}, the U-Net's "
            f"downsampling over {len(channels)} levels: use a multiple of {factor} or fewer levels"
        )
    groups, heads = kwargs["norm_num_groups"], kwargs["attention_head_dim"]
    for c in channels:
        if c % groups:
            raise ConfigError(f"denoiser.kwargs.norm_num_groups={groups} does not divide channels {c}")
        if isinstance(heads, int) and c % heads:
            raise ConfigError(
                f"denoiser.kwargs.attention_head_dim={heads} (SD 1.x: head count) does not divide channels {c}"
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
    def build(cls, kwargs: Mapping[str, Any], prediction_type: str, pretrained: str | None = None,
              asked: Mapping[str, Any] | None = None) -> UNetDenoiser:
        """Random init from constructor ``kwargs``, or the weights named by ``pretrained`` (hub id or local
        path); then the loaded config must match the latent channels, text width and ``asked`` overrides."""
        if pretrained is None:
            validate_unet_kwargs(kwargs)
            model = cls(**kwargs)
        else:
            logger.info("loading U-Net weights from %s", pretrained)
            model = load_pretrained_unet(pretrained)
            keys = ("in_channels", "cross_attention_dim", *(asked or {}))
            differ = {k: (model.config.get(k), kwargs[k]) for k in keys
                      if _plain(model.config.get(k)) != _plain(kwargs[k])}
            if differ:
                raise ConfigError(
                    f"denoiser.pretrained={pretrained!r} has another architecture (loaded, asked): {differ}; set "
                    "denoiser.in_channels, denoiser.context_dim (cross_attention_dim) and denoiser.kwargs to match"
                )
        model.prediction_type = prediction_type
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
