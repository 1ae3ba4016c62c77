"""CXREvaluator: the project's own CXR classifier (``cxrgen-evaluator``) for FID_cxr and alignment AUROC.

A DenseNet-BC (cxrgen.evaluate.networks) trained on real shared CXRs by ``cxrgen train-evaluator``.
It takes images in the project's one pixel convention, (B, 1, H, W) in [image.low, image.high]
(default [-1, 1]); ``features`` gives the penultimate, globally pooled features (the FID_cxr
feature space, as RoentGen uses an XRV DenseNet's) and ``probabilities`` the sigmoid class
scores (for per-class AUROC against prompt labels). It is not torchxrayvision's model.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cxrgen.config import EvaluatorConfig, load_config, save_config
from cxrgen.data.manifest import CHEXPERT_LABELS
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.networks import DenseNet, build_densenet, densenet_size
from cxrgen.evaluate.resnet import RESNET_SIZES, NarrowResNet, build_resnet

log = logging.getLogger(__name__)

EVALUATOR_NAME = "cxrgen-evaluator"
CONFIG_NAME = "evaluator.yaml"
WEIGHTS_NAME = "model.safetensors"
IN_CHANNELS = 1


def resolve_evaluator_config(cfg: EvaluatorConfig) -> EvaluatorConfig:
    """``cfg`` with every architecture field filled from its ``arch`` preset (what is saved)."""
    if cfg.arch in RESNET_SIZES:  # a fixed preset: the DenseNet fields do not apply
        return cfg
    size = densenet_size(cfg.arch, growth_rate=cfg.growth_rate, block_config=cfg.block_config,
                         num_init_features=cfg.num_init_features, bn_size=cfg.bn_size)
    unknown = [c for c in cfg.class_names if c not in CHEXPERT_LABELS]
    if unknown:
        log.info("evaluator classes %s are not CheXpert observations; manifests must have these columns",
                 unknown)
    return dataclasses.replace(cfg, growth_rate=size.growth_rate, block_config=size.block_config,
                               num_init_features=size.num_init_features, bn_size=size.bn_size)


@functools.lru_cache(maxsize=64)
def _warn_once(message: str) -> None:
    """Log a conversion warning once per distinct message, not once per batch."""
    log.warning(message)


def as_evaluator_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images as float (B, 1, size, size): 3 channels averaged, other sizes resized, each said once."""
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"images have shape {tuple(images.shape)}: give (B, 1, H, W) grayscale (or (B, 3, H, W)) in [-1, 1]"
        )
    images = images.float()
    if images.shape[1] == 3:
        _warn_once("evaluator input has 3 channels: averaging them to 1 (grayscale CXR)")
        images = images.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if tuple(images.shape[-2:]) != (size, size):
        _warn_once(f"evaluator input is {images.shape[-2]}x{images.shape[-1]}: resizing to its training "
                   f"size {size}x{size} (bilinear, antialiased)")
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


class CXREvaluator(nn.Module):
    """cxrgen-evaluator: DenseNet-BC or narrow ResNet on (B, 1, H, W) CXRs; features (B, F), probabilities (B, C)."""

    name = EVALUATOR_NAME

    def __init__(self, cfg: EvaluatorConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = resolve_evaluator_config(cfg)
        if self.cfg.arch in RESNET_SIZES:
            self.net: DenseNet | NarrowResNet = build_resnet(self.cfg.arch, IN_CHANNELS, len(self.cfg.class_names),
                                                             generator)
            return
        self.net = build_densenet(
            self.cfg.arch, in_channels=IN_CHANNELS, num_classes=len(self.cfg.class_names),
            drop_rate=self.cfg.drop_rate, generator=generator, growth_rate=self.cfg.growth_rate,
            block_config=self.cfg.block_config, num_init_features=self.cfg.num_init_features,
            bn_size=self.cfg.bn_size,
        )

    # --- properties --------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes of ``probabilities``' columns, in order."""
        return self.cfg.class_names

    @property
    def feature_dim(self) -> int:
        """F: the width of ``features``."""
        return self.net.num_features

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.parameters()).device

    # --- inference ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of images (B, 1, H, W) in [image.low, image.high]."""
        return self.net(as_evaluator_input(images, self.cfg.image.size).to(self.device))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate (global-pooled) features (B, F) for FID_cxr; call ``.eval()`` first."""
        return self.net.features(as_evaluator_input(images, self.cfg.image.size).to(self.device))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid class probabilities (B, C), columns in ``class_names`` order; call ``.eval()`` first."""
        return torch.sigmoid(self.forward(images))

    # --- persistence -------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``evaluator.yaml`` (resolved config) and ``model.safetensors`` into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, out_dir / CONFIG_NAME)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(weights, out_dir / WEIGHTS_NAME, metadata={"format": "pt", "model": EVALUATOR_NAME})
        return out_dir

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> CXREvaluator:
        """Load a folder written by ``save_pretrained``; returned in eval mode."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ConfigError(
                f"{folder} is not a saved {EVALUATOR_NAME}: it needs {CONFIG_NAME} and {WEIGHTS_NAME}; "
                "train one with `cxrgen train-evaluator CONFIG` and give its output folder"
            )
        model = cls(load_config(EvaluatorConfig, config_path))
        state = load_file(weights_path)
        try:
            model.net.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"weights in {weights_path} do not fit {config_path}: {exc}") from exc
        return model.to(device).eval()
