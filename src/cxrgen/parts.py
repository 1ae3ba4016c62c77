"""The three model parts (text encoder, latent codec, denoiser) built from one ModelConfig, and their size."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cxrgen.autoencoder import LatentCodec
from cxrgen.compute import count_params, denoiser_flops
from cxrgen.config import ModelConfig, TrainConfig, load_config
from cxrgen.denoisers import build_denoiser
from cxrgen.errors import ConfigError
from cxrgen.text import build_text_encoder

log = logging.getLogger(__name__)

@dataclass
class ModelParts:
    """The parts that could be built; a part that could not (e.g. weights offline) is None with a note."""

    denoiser: nn.Module
    text_encoder: nn.Module | None = None
    autoencoder: LatentCodec | None = None
    latent_shape: tuple[int, int, int] = (4, 32, 32)
    context_len: int = 77
    notes: list[str] = field(default_factory=list)


def latent_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(C, h, w) of the latents of ``cfg.image_size`` images under the configured autoencoder."""
    factor = cfg.autoencoder.downsample_factor
    if cfg.image_size % factor:
        raise ConfigError(f"image_size={cfg.image_size} is not divisible by the autoencoder factor {factor}")
    side = cfg.image_size // factor
    return (cfg.autoencoder.channels, side, side)


def check_consistent(cfg: ModelConfig) -> None:
    """Raise ConfigError when the denoiser does not fit the autoencoder's latents or the text length."""
    c, h, _ = latent_shape(cfg)
    den = cfg.denoiser
    if den.in_channels != c or den.sample_size != h:
        raise ConfigError(
            f"denoiser expects latents ({den.in_channels}, {den.sample_size}, {den.sample_size}) but the "
            f"autoencoder gives ({c}, {h}, {h}) for {cfg.image_size} px images: set denoiser.in_channels="
            f"{c} and denoiser.sample_size={h}")
    if cfg.text_encoder.context_length > den.context_len:
        raise ConfigError(
            f"the text encoder gives {cfg.text_encoder.context_length} context positions (pooling="
            f"{cfg.text_encoder.pooling}) but denoiser.context_len="
            f"{den.context_len}: raise denoiser.context_len or lower the text limits")


def _try(what: str, build, notes: list[str]) -> Any:
    """Build a part, or record why it could not be built (e.g. pretrained weights not available)."""
    try:
        return build()
    except (ConfigError, OSError) as exc:
        notes.append(f"{what} not built: {exc}")
        log.warning("%s not built: %s", what, exc)
        return None


def build_parts(cfg: ModelConfig, meta: bool = False) -> ModelParts:
    """Build the parts of ``cfg``; with ``meta`` fresh modules live on the meta device (free to count)."""
    check_consistent(cfg)
    notes: list[str] = []
    device = torch.device("meta") if meta else torch.device("cpu")
    with device:
        denoiser = build_denoiser(cfg.denoiser)
    autoencoder_device = device if cfg.autoencoder.pretrained is None else torch.device("cpu")
    with autoencoder_device:
        codec = _try("autoencoder", lambda: LatentCodec.build(cfg.autoencoder), notes)
    text = _try("text encoder", lambda: build_text_encoder(cfg.text_encoder), notes)
    return ModelParts(denoiser, text, codec, latent_shape(cfg), cfg.text_encoder.context_length, notes)


def build_model_parts(cfg: TrainConfig) -> ModelParts:
    """The parts of ``cfg.model`` for training; random init seeded by cfg.seed without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        parts = build_parts(cfg.model)
    if parts.text_encoder is None or parts.autoencoder is None:
        raise ConfigError("cannot train: " + "; ".join(parts.notes))
    return parts


def _model_config(path: Path, overrides: list[str] | None) -> ModelConfig:
    """The ModelConfig of a model YAML, or the ``model`` section of a training YAML (overrides apply to it)."""
    if path.is_file() and "model" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}):
        return load_config(TrainConfig, path, [f"model.{o}" for o in overrides or []]).model
    return load_config(ModelConfig, path, overrides)


def describe(config: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Params of each part and denoiser GFLOPs/GMACs per forward, for a model or training YAML."""
    return describe_parts(build_parts(_model_config(Path(config), overrides), meta=True))


def describe_parts(parts: ModelParts) -> dict[str, Any]:
    """Params of each part and denoiser GFLOPs/GMACs per forward (a multiply-add counts 2 FLOPs)."""
    spec = parts.denoiser.spec
    info: dict[str, Any] = {"denoiser": {"class": type(parts.denoiser).__name__,
                                         "params": count_params(parts.denoiser)}}
    info["denoiser"].update(denoiser_flops(parts.denoiser, parts.latent_shape, parts.context_len, spec.context_dim))
    for name, part in (("text_encoder", parts.text_encoder), ("autoencoder", parts.autoencoder)):
        info[name] = {"params": None if part is None else count_params(part)}
    info["latent_shape"] = list(parts.latent_shape)
    info["context"] = [parts.context_len, spec.context_dim]
    info["flop_convention"] = "gflops_fwd counts a multiply-add as 2 FLOPs; gmacs_fwd = gflops_fwd / 2"
    info["notes"] = parts.notes
    return info
