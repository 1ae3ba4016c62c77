"""The denoiser registry (as DiT's ``DiT_models``): size name -> class and constructor keyword arguments.

A ``DenoiserConfig`` picks a size by ``name``; its shared fields (latent channels and side, text
width and length, target) and its ``kwargs`` overrides are merged over the preset's arguments, and
the overrides are checked against the class's constructor before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrgen.config import DenoiserConfig
from cxrgen.denoisers.codi import CodiXR
from cxrgen.denoisers.joint_uvit import JointUViT
from cxrgen.denoisers.unet import UNetDenoiser, sd_block_layout
from cxrgen.denoisers.uvit import UViT
from cxrgen.errors import ConfigError


@dataclass(frozen=True)
class DenoiserPreset:
    """A registry entry: the denoiser class and the constructor keyword arguments of one size."""

    cls: type[nn.Module]
    kwargs: Mapping[str, Any]


# U-ViT sizes of Bao et al. 2023, Table 1 (depth counts every block; all use patch 2 on 32x32x4
# latents of 256 px images, MLP ratio 4, no qkv bias, the raw sinusoid as time token).
_UVIT_PAPER = dict(patch_size=2, mlp_ratio=4.0, qkv_bias=False, time_embed_type="identity", project_context=True,
                   final_conv=True)
# SD 1.x U-Net (CompVis/stable-diffusion-v1-*, subfolder unet); sample_size is 64 there (512 px),
# ours comes from DenoiserConfig.sample_size (32 for 256 px). Block types follow the levels (sd_block_layout).
_UNET_SD = dict(layers_per_block=2, attention_head_dim=8, norm_num_groups=32)

DENOISERS: dict[str, DenoiserPreset] = {
    "uvit-s": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=13, hidden_size=512, num_heads=8)),
    "uvit-s-deep": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=17, hidden_size=512, num_heads=8)),
    "uvit-m": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=17, hidden_size=768, num_heads=12)),
    "uvit-l": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=21, hidden_size=1024, num_heads=16)),
    # the shipped CPU default: patch 4 on 32x32x4 latents (64 patch tokens), 7.8 M parameters
    "uvit-xs": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=9, hidden_size=256, num_heads=4, patch_size=4)),
    # CPU-sized, for tests and smoke runs
    "uvit-tiny": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=3, hidden_size=32, num_heads=2, time_embed_type="mlp")),
    "uvit-mini": DenoiserPreset(UViT, dict(_UVIT_PAPER, depth=5, hidden_size=64, num_heads=4)),
    "sd15-unet": DenoiserPreset(UNetDenoiser, dict(_UNET_SD, block_out_channels=(320, 640, 1280, 1280))),
    # SD 1.x-shaped (cross-attention in all but the last level, 2 ResNets per level) scaled to a CPU
    "unet-xs": DenoiserPreset(UNetDenoiser, dict(_UNET_SD, block_out_channels=(32, 64, 128))),
    "unet-tiny": DenoiserPreset(UNetDenoiser, dict(_UNET_SD, block_out_channels=(32, 64), layers_per_block=1)),
}

#: Joint U-ViTs (frontal + lateral + report tokens, UniDiffuser-style): JointUViT keyword presets.
JOINT_DENOISERS: dict[str, dict[str, Any]] = {
    "joint-uvit-tiny": dict(hidden_size=32, depth=3, num_heads=2, patch_size=2),  # tests
    "joint-uvit-xs": dict(hidden_size=128, depth=7, num_heads=4, patch_size=4),  # the CPU twin model
    "joint-uvit-s": dict(hidden_size=512, depth=13, num_heads=8, patch_size=2),  # U-ViT-S width and depth
}


def build_joint_denoiser(name: str, generator: torch.Generator | None = None, **overrides: Any) -> JointUViT:
    """A JointUViT from preset ``name`` with ``overrides`` (latent sizes, modalities...) on top."""
    if name not in JOINT_DENOISERS:
        raise ConfigError(f"unknown joint denoiser {name!r}; valid names: {sorted(JOINT_DENOISERS)}")
    return JointUViT(**{**JOINT_DENOISERS[name], **overrides}, generator=generator)


def _uvit_shared(cfg: DenoiserConfig) -> dict[str, Any]:
    return {"in_channels": cfg.in_channels, "sample_size": cfg.sample_size, "context_dim": cfg.context_dim,
            "context_len": cfg.context_len, "prediction_type": cfg.prediction_type}


def _unet_shared(cfg: DenoiserConfig) -> dict[str, Any]:
    """The U-Net takes any number of text tokens; its target lives in the scheduler's config."""
    return {"in_channels": cfg.in_channels, "out_channels": cfg.in_channels, "sample_size": cfg.sample_size,
            "cross_attention_dim": cfg.context_dim}


#: Class -> its constructor arguments that the config's shared fields set (not allowed in kwargs).
_SHARED: dict[type, Callable[[DenoiserConfig], dict[str, Any]]] = {UViT: _uvit_shared, UNetDenoiser: _unet_shared}
_NOT_KWARGS = ("self", "generator")  # constructor arguments that are not architecture


def denoiser_preset(name: str) -> DenoiserPreset:
    """The registry entry of ``name``; ConfigError naming the valid ones."""
    if name not in DENOISERS:
        raise ConfigError(f"unknown denoiser {name!r}; valid names: {sorted(DENOISERS)}")
    return DENOISERS[name]


def check_kwargs(cls: type, kwargs: Mapping[str, Any], shared: Mapping[str, Any]) -> None:
    """Raise ConfigError for a ``denoiser.kwargs`` key that ``cls``'s constructor does not take, or that a
    shared field sets."""
    params = inspect.signature(cls.__init__).parameters
    valid = sorted(k for k, p in params.items() if k not in _NOT_KWARGS and k not in shared
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    for key in kwargs:
        if key in shared:
            raise ConfigError(f"denoiser.kwargs.{key} follows the shared denoiser fields: set denoiser.in_channels, "
                              "sample_size, context_dim, context_len or prediction_type instead")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"denoiser.kwargs.{key} is not a parameter of {cls.__name__}{hint}; valid: {valid}")


def denoiser_kwargs(cfg: DenoiserConfig) -> dict[str, Any]:
    """The constructor keyword arguments of ``cfg``'s denoiser: the preset's, then ``cfg.kwargs``, then the
    shared fields (checked)."""
    preset = denoiser_preset(cfg.name)
    shared = _SHARED[preset.cls](cfg)
    check_kwargs(preset.cls, cfg.kwargs, shared)
    kwargs = {**preset.kwargs, **cfg.kwargs, **shared}
    return sd_block_layout(kwargs) if preset.cls is UNetDenoiser else kwargs


def build_denoiser(cfg: DenoiserConfig, generator: torch.Generator | None = None) -> nn.Module:
    """A denoiser with the call signature ``(z_t, t, context, mask) -> prediction``.

    Weights are random (U-ViT: drawn from ``generator``; U-Net: diffusers' init) or, with
    ``cfg.pretrained``, loaded to start from (fine-tuning): a U-Net from SD weights (hub id or
    folder), a U-ViT from a folder its ``save_pretrained`` wrote or a CXRPipeline folder. Bad values
    raise ConfigError here, not in forward.
    """
    kwargs = denoiser_kwargs(cfg)
    if denoiser_preset(cfg.name).cls is UNetDenoiser:
        return UNetDenoiser.build(kwargs, cfg.prediction_type, cfg.pretrained, asked=cfg.kwargs)
    model = UViT(**kwargs, generator=generator)
    if cfg.pretrained is not None:
        model.load_weights_from(cfg.pretrained)
    return model


#: Saved class name -> class, for folders written by a denoiser's ``save_pretrained``.
_CLASSES = {**{cls.__name__: cls for cls in _SHARED}, "JointUViT": JointUViT, "CodiXR": CodiXR}


def load_denoiser(directory: str | Path) -> nn.Module:
    """Load any denoiser written by its ``save_pretrained`` (the class is named in its config.json)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"no config.json in {directory}: give a folder written by a denoiser's save_pretrained")
    name = json.loads(path.read_text(encoding="utf-8")).get("_class_name")
    if name not in _CLASSES:
        raise ConfigError(f"{path} names class {name!r}; cxrgen denoisers are {sorted(_CLASSES)}")
    return _CLASSES[name].from_pretrained(directory)
