"""The study's classifier and its four training arms: real, synthetic, real + synthetic, synthetic then real.

The classifier is a small DenseNet-BC (cxrgen.evaluate.networks) on gray images of a few dozen
pixels, trained with AdamW under the cxrgen-evaluator's augmentation (small rotation, zoom, shift
and intensity jitter; never a flip). Multi-class tasks use softmax cross-entropy, multi-label
tasks binary cross-entropy per class. Every draw (initialisation, batch order, augmentation)
comes from the arm's seeded torch.Generator. Synthetic-then-real (RoentGen-v2) trains one network
on the synthetic images, then continues training that same network on the real images with a
fresh optimizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cxrgen.config import EvaluatorTrainConfig, ImageConfig
from cxrgen.config.augment import COMBINED, PRETRAIN, REAL, SYNTHETIC, AugmentStudyConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.networks import DenseNet, build_densenet
from cxrgen.evaluate.train_evaluator import augment

log = logging.getLogger(__name__)

#: Augmentation ranges: the cxrgen-evaluator's defaults (affine + intensity jitter, no reflection).
AUGMENTATION = EvaluatorTrainConfig()


@dataclass
class Images:
    """Images (N, 1, S, S) in [-1, 1] with their (N, C) 0/1 targets."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: np.ndarray) -> Images:
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64))
        return Images(self.images[idx], self.targets[idx])

    @staticmethod
    def join(a: Images, b: Images) -> Images:
        return Images(torch.cat([a.images, b.images]), torch.cat([a.targets, b.targets]))


def new_classifier(cfg: AugmentStudyConfig, n_classes: int, generator: torch.Generator) -> DenseNet:
    """A freshly initialised DenseNet of size ``cfg.arch`` with ``n_classes`` outputs (draws from ``generator``)."""
    return build_densenet(cfg.arch, num_classes=n_classes, generator=generator)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Softmax cross-entropy on one-hot targets (multi-class) or mean binary cross-entropy (multi-label)."""
    if multiclass:
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def fit(net: DenseNet, data: Images, epochs: int, lr: float, cfg: AugmentStudyConfig, multiclass: bool,
        generator: torch.Generator, desc: str = "training") -> DenseNet:
    """Train ``net`` in place (and return it): AdamW, shuffled batches, augmentation, ``epochs`` passes."""
    if len(data) < 2:
        raise DataError(f"{desc}: {len(data)} training image(s); a classifier needs at least 2")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    image_cfg = ImageConfig(size=data.images.shape[-1])
    net.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not cfg.progress, leave=False):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            if batch.shape[0] < 2:  # BatchNorm needs two samples
                continue
            images = augment(data.images[batch], AUGMENTATION, image_cfg, generator)  # (B, 1, S, S)
            loss = loss_fn(net(images), data.targets[batch], multiclass)
            if not torch.isfinite(loss):
                raise DataError(f"{desc}: the loss is {loss.item()}; check the images, or lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: DenseNet, images: torch.Tensor, multiclass: bool, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C): softmax (multi-class) or sigmoid (multi-label), network in eval mode."""
    net.eval()
    logits = torch.cat([net(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    probs = logits.softmax(dim=1) if multiclass else logits.sigmoid()
    return probs.double().numpy()


def arm_epochs(cfg: AugmentStudyConfig, own: int, both: int) -> int:
    """Epochs of a one-source arm of ``own`` images: ``cfg.epochs``, or with ``matched_steps`` as many as
    the arms that train on ``both`` (real + synthetic) images take, so that every arm takes as many steps."""
    if not cfg.matched_steps or own == 0:
        return cfg.epochs
    return max(1, round(cfg.epochs * both / own))


def train_arm(arm: str, real: Images, synthetic: Images, cfg: AugmentStudyConfig, multiclass: bool,
              seed: int) -> DenseNet:
    """The classifier of one arm and seed (same initialisation for every arm of a seed)."""
    generator = torch.Generator().manual_seed(seed)
    net = new_classifier(cfg, real.targets.shape[1], generator)
    desc = f"{arm} (seed {seed})"
    if arm == REAL:
        return fit(net, real, arm_epochs(cfg, len(real), len(real) + len(synthetic)), cfg.lr, cfg, multiclass,
                   generator, desc)
    if arm == SYNTHETIC:
        return fit(net, synthetic, arm_epochs(cfg, len(synthetic), len(real) + len(synthetic)), cfg.lr, cfg,
                   multiclass, generator, desc)
    if arm == COMBINED:
        return fit(net, Images.join(real, synthetic), cfg.epochs, cfg.lr, cfg, multiclass, generator, desc)
    if arm == PRETRAIN:
        fit(net, synthetic, cfg.epochs, cfg.lr, cfg, multiclass, generator, f"{desc}: synthetic pre-training")
        return fit(net, real, cfg.finetune_epochs or cfg.epochs, cfg.finetune_lr or cfg.lr, cfg, multiclass,
                   generator, f"{desc}: real fine-tuning")
    raise ConfigError(f"unknown arm {arm!r}")
