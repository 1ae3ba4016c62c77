"""Configs of training runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrgen.errors import ConfigError

from cxrgen.config.data import ImageConfig
from cxrgen.config.models import AutoencoderConfig


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """One training run of the 1-channel autoencoder: data, pixels, model, loss weights, optimizer."""

    manifests: tuple[str, ...] = ()  # manifest files (parquet/CSV) with image_path and split columns
    image_globs: tuple[str, ...] = ()  # or glob patterns of image files, held out by holdout_fraction
    image_root: str | None = None  # relative image paths join this; None: the manifest's folder
    out_dir: str = "runs/autoencoder"
    image: ImageConfig = field(default_factory=ImageConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    steps: int = 20000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    ssim_weight: float = 0.5  # weight of the structural term (1 - SSIM)
    kl_weight: float = 1e-6  # KL(q(z|x) || N(0, I)) per latent element; small, as in LDM's KL-f8
    use_discriminator: bool = False  # PatchGAN hinge loss (Isola et al. 2017; Esser et al. 2021)
    disc_start: int = 10000  # step from which the adversarial term is on
    disc_weight: float = 0.1
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3
    holdout_fraction: float = 0.1  # share of image_globs files kept for evaluation
    eval_split: str = "validate"  # manifest split used for evaluation
    eval_max_images: int = 256
    scale_max_images: int = 512  # training images encoded to measure the latent scale and shift
    intensity_jitter: float = 0.0  # largest random gain/offset on [0, 1]-mapped pixels; never a flip
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError(f"steps={self.steps}, batch_size={self.batch_size}: give positive numbers")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction={self.holdout_fraction}: give a share in (0, 1)")
        if min(self.l1_weight, self.ssim_weight, self.kl_weight, self.disc_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if not 0.0 <= self.intensity_jitter < 0.5:
            raise ConfigError(f"intensity_jitter={self.intensity_jitter}: give a value in [0, 0.5)")
