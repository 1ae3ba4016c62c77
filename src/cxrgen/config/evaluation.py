"""Configs of the evaluation side: the cxrgen-evaluator network and its training run."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrgen.config.data import ImageConfig
from cxrgen.errors import ConfigError

#: How uncertain (-1) labels enter the masked BCE: ignored (masked out), or read as 1 / 0
#: (U-Ignore, U-Ones, U-Zeros of Irvin et al. 2019, CheXpert, sec. 4). NaN is always masked.
UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")


@dataclass(frozen=True)
class EvaluatorConfig:
    """The cxrgen-evaluator: a DenseNet-BC size (registry name) plus overrides, its classes and pixels.

    Architecture fields left at None take the preset's value (cxrgen.evaluate.networks.DENSENET_SIZES);
    the resolved config is what ``save_pretrained`` writes beside the weights.
    """

    arch: str = "densenet-small"  # densenet121 | densenet-small | densenet-tiny
    class_names: tuple[str, ...] = ("No Finding", "Pneumonia")
    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=128))
    growth_rate: int | None = None  # k: feature maps each dense layer adds (Huang et al. 2017)
    block_config: tuple[int, ...] | None = None  # dense layers per block
    num_init_features: int | None = None  # stem width
    bn_size: int | None = None  # bottleneck width = bn_size * k (the "B" of DenseNet-BC)
    drop_rate: float = 0.0  # dropout after each dense layer

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ConfigError("evaluator.class_names is empty: name at least one class to predict")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"evaluator.class_names {list(self.class_names)} repeats a name: list each once")
        for name in ("growth_rate", "num_init_features", "bn_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"evaluator.{name}={value}: give a positive number or null for the preset")
        if self.block_config is not None and (not self.block_config or min(self.block_config) <= 0):
            raise ConfigError(f"evaluator.block_config={self.block_config}: give positive layer counts")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"evaluator.drop_rate={self.drop_rate}: give a probability in [0, 1)")


@dataclass(frozen=True)
class EvaluatorTrainConfig:
    """One training run of the cxrgen-evaluator: manifests, classes, augmentation, optimizer, epochs."""

    model: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    manifests: tuple[str, ...] = ()  # manifests from `cxrgen prepare` (image_path, split, CheXpert columns)
    image_root: str | None = None  # relative image paths join this; None: the manifest's folder
    out_dir: str = "runs/evaluator"
    train_split: str = "train"
    validate_split: str = "validate"  # scored after every epoch (progress only; the last epoch is kept)
    test_split: str = "test"  # held-out AUROC reported in metrics.json
    uncertain: str = "ignore"  # ignore | ones | zeros: how -1 labels enter the loss
    min_class_count: int = 10  # warn when a class has fewer certain positives or negatives in training
    preload: bool = True  # decode and resize every image once, keep them in memory
    max_train_images: int | None = None  # seeded random subset of the training rows; None: all
    # augmentation: small random affine + intensity jitter; never a flip (laterality)
    max_rotation_deg: float = 5.0
    max_scale: float = 0.05  # zoom factor drawn in [1 - s, 1 + s]
    max_translate: float = 0.05  # shift drawn in [-t, t] of the image side
    intensity_jitter: float = 0.1  # gain in [1 - j, 1 + j] and offset in [-j, j] on [0, 1] pixels
    gamma_jitter: float = 0.2  # gamma drawn log-uniformly in [1 / (1 + g), 1 + g]
    # optimisation
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    eval_batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.eval_batch_size) <= 0:
            raise ConfigError("epochs, batch_size and eval_batch_size must be positive")
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ConfigError(f"uncertain={self.uncertain!r}: use one of {list(UNCERTAIN_POLICIES)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr={self.lr}, weight_decay={self.weight_decay}: need lr > 0, weight_decay >= 0")
        if self.max_train_images is not None and self.max_train_images <= 0:
            raise ConfigError(f"max_train_images={self.max_train_images}: give a positive count or null")
        if not 0.0 <= self.max_scale < 1.0 or not 0.0 <= self.max_translate < 0.5:
            raise ConfigError("max_scale must be in [0, 1) and max_translate in [0, 0.5)")
        if not 0.0 <= self.max_rotation_deg <= 45.0:
            raise ConfigError(f"max_rotation_deg={self.max_rotation_deg}: give a small angle in [0, 45]")
        if not 0.0 <= self.intensity_jitter < 0.5 or self.gamma_jitter < 0:
            raise ConfigError("intensity_jitter must be in [0, 0.5) and gamma_jitter >= 0")
