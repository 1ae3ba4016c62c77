"""The denoiser registry: a plain dict of presets, and ``build_denoiser`` / ``load_denoiser``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrgen.config import DenoiserConfig
from cxrgen.denoisers.joint_uvit import JointUViT
from cxrgen.denoisers.unet import UNetDenoiser
from cxrgen.denoisers.uvit import UViT
from cxrgen.errors import ConfigError

UVIT_FIELDS = ("hidden_size", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias", "time_embed",
               "project_context", "final_conv")
UNET_FIELDS = ("block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups")

# U-ViT sizes of Bao et al. 2023, Table 1 (depth counts every block; all use patch 2 on 32x32x4
# latents of 256 px images, MLP ratio 4, no qkv bias, the raw sinusoid as time token).
_UVIT_PAPER = dict(family="uvit", patch_size=2, mlp_ratio=4.0, qkv_bias=False, time_embed="identity",
                   project_context=True, final_conv=True)
# SD 1.x U-Net (CompVis/stable-diffusion-v1-*, subfolder unet); sample_size is 64 there (512 px),
# ours comes from DenoiserConfig.sample_size (32 for 256 px).
_UNET_SD = dict(family="unet", layers_per_block=2, attention_head_dim=8, norm_num_groups=32)

DENOISERS: dict[str, dict[str, Any]] = {
    "uvit-s": dict(_UVIT_PAPER, depth=13, hidden_size=512, num_heads=8),
    "uvit-s-deep": dict(_UVIT_PAPER, depth=17, hidden_size=512, num_heads=8),
    "uvit-m": dict(_UVIT_PAPER, depth=17, hidden_size=768, num_heads=12),
    "uvit-l": dict(_UVIT_PAPER, depth=21, hidden_size=1024, num_heads=16),
    # the shipped CPU default: patch 4 on 32x32x4 latents (64 patch tokens), 7.8 M parameters
    "uvit-xs": dict(_UVIT_PAPER, depth=9, hidden_size=256, num_heads=4, patch_size=4),
    # CPU-sized, for tests and smoke runs
    "uvit-tiny": dict(_UVIT_PAPER, depth=3, hidden_size=32, num_heads=2, time_embed="mlp"),
    "uvit-mini": dict(_UVIT_PAPER, depth=5, hidden_size=64, num_heads=4),
    "sd15-unet": dict(_UNET_SD, block_out_channels=(320, 640, 1280, 1280)),
    # SD 1.x-shaped (cross-attention in all but the last level, 2 ResNets per level) scaled to a CPU
    "unet-xs": dict(_UNET_SD, block_out_channels=(32, 64, 128)),
    "unet-tiny": dict(_UNET_SD, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8),
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


def _preset(name: str) -> dict[str, Any]:
    if name not in DENOISERS:
        raise ConfigError(f"unknown denoiser {name!r}; valid names: {sorted(DENOISERS)}")
    return DENOISERS[name]


def resolve_config(cfg: DenoiserConfig) -> DenoiserConfig:
    """Fill the architecture fields left at None from the named preset; other families' fields are errors."""
    preset = _preset(cfg.name)
    own, other = (UVIT_FIELDS, UNET_FIELDS) if preset["family"] == "uvit" else (UNET_FIELDS, UVIT_FIELDS)
    stray = [k for k in other if getattr(cfg, k) is not None]
    if stray:
        raise ConfigError(f"denoiser {cfg.name!r} is a {preset['family']}: remove the fields {stray}")
    if preset["family"] == "unet" and cfg.pos_embed != "learned":
        raise ConfigError(f"denoiser {cfg.name!r} is a unet: pos_embed={cfg.pos_embed!r} applies to U-ViTs only")
    filled = {k: preset[k] for k in own if getattr(cfg, k) is None and k in preset}
    return dataclasses.replace(cfg, **filled)


def uvit_kwargs(cfg: DenoiserConfig) -> dict[str, Any]:
    """``UViT`` constructor arguments of a training config's denoiser section (preset filled in)."""
    resolved = resolve_config(cfg)
    keys = ("in_channels", "sample_size", "context_dim", "context_len", "prediction_type", "pos_embed", *UVIT_FIELDS)
    renamed = {"time_embed": "time_embed_type", "pos_embed": "pos_embed_type"}  # module names keep the short ones
    return {renamed.get(k, k): getattr(resolved, k) for k in keys}


def build_denoiser(cfg: DenoiserConfig, generator: torch.Generator | None = None) -> nn.Module:
    """A denoiser with the call signature ``(z_t, t, context, mask) -> prediction``.

    Weights are random (U-ViT: drawn from ``generator``; U-Net: diffusers' init) or, with
    ``cfg.pretrained``, loaded to start from (fine-tuning): a U-Net from SD weights (hub id or
    folder), a U-ViT from a folder its ``save_pretrained`` wrote or a CXRPipeline folder. Bad values
    raise ConfigError here, not in forward.
    """
    resolved = resolve_config(cfg)
    if _preset(cfg.name)["family"] == "uvit":
        model = UViT(**uvit_kwargs(resolved), generator=generator)
        if resolved.pretrained is not None:
            model.load_weights_from(resolved.pretrained)
        return model
    return UNetDenoiser.from_denoiser_config(resolved)


#: Saved class name -> class, for folders written by a denoiser's ``save_pretrained``.
_CLASSES = {"UViT": UViT, "UNetDenoiser": UNetDenoiser, "JointUViT": JointUViT}


def load_denoiser(directory: str | Path) -> nn.Module:
    """Load any denoiser written by its ``save_pretrained`` (the class is named in its config.json)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"no config.json in {directory}: give a folder written by a denoiser's save_pretrained")
    name = json.loads(path.read_text(encoding="utf-8")).get("_class_name")
    if name not in _CLASSES:
        raise ConfigError(f"{path} names class {name!r}; cxrgen denoisers are {sorted(_CLASSES)}")
    return _CLASSES[name].from_pretrained(directory)
