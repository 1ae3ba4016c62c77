"""Configs of training runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cxrgen.config.data import ImageConfig
from cxrgen.config.models import AutoencoderConfig, ModelConfig
from cxrgen.config.sampling import FLOW_SAMPLER_NAMES, SamplingConfig
from cxrgen.errors import ConfigError


def check_rates(**rates: float | None) -> None:
    """Learning rates must be finite and > 0 (None: unset); ConfigError naming the first bad one."""
    for name, value in rates.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value}: give a finite learning rate > 0, e.g. {name}=1e-4")


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
    crop_size: int | None = None  # train on random crops of this side (the codec is convolutional); eval on full images
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
        check_rates(lr=self.lr, disc_lr=self.disc_lr)
        if min(self.l1_weight, self.ssim_weight, self.kl_weight, self.disc_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if not 0.0 <= self.intensity_jitter < 0.5:
            raise ConfigError(f"intensity_jitter={self.intensity_jitter}: give a value in [0, 0.5)")
        if self.crop_size is not None and not 8 <= self.crop_size <= self.image.size:
            raise ConfigError(f"crop_size={self.crop_size}: give a side in [8, image.size={self.image.size}] or null")


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule (a diffusers DDPMScheduler); prediction type is the denoiser's."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # Stable Diffusion / RoentGen; or linear, squaredcos_cap_v2
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError(f"schedule.num_train_timesteps={self.num_train_timesteps}: give at least 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"schedule betas ({self.beta_start}, {self.beta_end}): need 0 < start < end < 1")


#: Training objectives: DDPM noising (the denoiser's epsilon / v / x0 target) or rectified flow (velocity).
OBJECTIVES = ("ddpm", "flow")
LOSS_WEIGHTINGS = ("none", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What one training step optimises: the noising path, timestep density, loss weights, token masking.

    ``kind=flow`` is rectified flow (SD3, Esser et al. 2024): x_s = (1 - s) x0 + s eps, target
    v = eps - x0, s ~ logit-normal(logit_mean, logit_std) or uniform; the denoiser's
    prediction_type must then be flow_prediction and the sampler one of the flow-* samplers.
    ``loss_weighting=min_snr`` is Min-SNR-gamma (Hang et al. 2023), for ddpm only. ``mask_ratio`` > 0
    drops that share of a U-ViT's patch tokens in a ``masked_fraction`` of micro-batches (MaskDiT,
    Zheng et al. 2023); the loss then covers the kept patches only.
    """

    kind: str = "ddpm"  # ddpm | flow
    timestep_sampling: str = "uniform"  # uniform | logit_normal (flow only; SD3's default is logit_normal)
    logit_mean: float = 0.0  # logit-normal location m: s = sigmoid(m + std * n), n ~ N(0, 1)
    logit_std: float = 1.0
    loss_weighting: str = "none"  # none | min_snr
    min_snr_gamma: float = 5.0  # the clamp gamma of min(SNR, gamma) (Hang et al. 2023: 5)
    mask_ratio: float = 0.0  # share of U-ViT patch tokens dropped in a masked step; 0: never mask
    masked_fraction: float = 1.0  # share of micro-batches that are masked (MaskDiT's unmasked steps: the rest)

    def __post_init__(self) -> None:
        for name, value, allowed in (("kind", self.kind, OBJECTIVES), ("loss_weighting", self.loss_weighting,
                                      LOSS_WEIGHTINGS), ("timestep_sampling", self.timestep_sampling,
                                      TIMESTEP_SAMPLINGS)):
            if value not in allowed:
                raise ConfigError(f"objective.{name}={value!r}: use one of {list(allowed)}")
        if self.kind == "ddpm" and self.timestep_sampling != "uniform":
            raise ConfigError("objective.timestep_sampling=logit_normal is for kind=flow (continuous s); a ddpm "
                              "objective draws t uniformly: set objective.kind=flow or timestep_sampling=uniform")
        if self.kind == "flow" and self.loss_weighting != "none":
            raise ConfigError("objective.loss_weighting=min_snr weights the ddpm targets; a flow objective is "
                              "weighted by its timestep density: use timestep_sampling=logit_normal instead")
        if not (math.isfinite(self.logit_mean) and math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ConfigError(f"objective.logit_std={self.logit_std}: give a finite std > 0 and a finite mean")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ConfigError(f"objective.min_snr_gamma={self.min_snr_gamma}: give a value > 0 (the paper's: 5)")
        if not 0.0 <= self.mask_ratio < 1.0 or not 0.0 <= self.masked_fraction <= 1.0:
            raise ConfigError(f"objective.mask_ratio={self.mask_ratio}, masked_fraction={self.masked_fraction}: "
                              "give a ratio in [0, 1) and a fraction in [0, 1] (MaskDiT: 0.5 of the tokens)")

    @property
    def is_flow(self) -> bool:
        """Whether this is the rectified-flow objective."""
        return self.kind == "flow"


#: Storage dtypes of the latent / text-embedding cache (items are read back as float32).
CACHE_DTYPES = ("float32", "float16", "bfloat16")
#: The training record a run writes beside its weights (its config: manifests, split, model).
TRAIN_CONFIG_NAME = "train_config.yaml"


@dataclass(frozen=True)
class CacheConfig:
    """How `cxrgen cache` stores latents (+ frozen text embeddings): rows per shard, dtype, batching."""

    shard_size: int = 1024  # rows per safetensors shard file
    dtype: str = "float32"  # float32 | float16 | bfloat16 (float16 halves the size; see benchmarks/README.md)
    batch_size: int = 16  # images encoded at a time
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # image-loading worker processes

    def __post_init__(self) -> None:
        if min(self.shard_size, self.batch_size) <= 0 or self.num_workers < 0:
            raise ConfigError("cache.shard_size and cache.batch_size must be positive, cache.num_workers >= 0")
        if self.dtype not in CACHE_DTYPES:
            raise ConfigError(f"cache.dtype={self.dtype!r}: use one of {list(CACHE_DTYPES)}")


@dataclass(frozen=True)
class TrainConfig:
    """One diffusion training run: model parts, data, objective, optimizer, checkpoints and logs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # data
    manifests: tuple[str, ...] = ()  # manifests from `cxrgen prepare` (image_path, prompt, split)
    split: str = "train"  # manifest split to train on
    image: ImageConfig = field(default_factory=ImageConfig)
    cache_dir: str | None = None  # latents (+ frozen text embeddings) from `cxrgen cache`; read when present
    cache: CacheConfig = field(default_factory=CacheConfig)  # how `cxrgen cache` writes it
    # objective (RoentGen eq. 1-3; or rectified flow, Min-SNR, MaskDiT) and guidance training (Ho & Salimans 2022)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    cfg_dropout: float = 0.1  # probability of replacing a prompt by the null prompt
    # optimisation
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    text_lr: float | None = None  # learning rate of a trainable text encoder; None: lr
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine (after warm-up)
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    mixed_precision: str = "no"  # no | bf16 | fp16 (through accelerate)
    ema_decay: float | None = 0.999  # EMA of denoiser weights; None: no EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at update n: short runs forget the init
    text_by_reference: bool = False  # final model names a frozen text encoder's source instead of copying it
    # checkpoints, samples, logs
    out_dir: str = "runs/cxrgen"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # the last K checkpoints are kept
    sample_every: int = 0  # grid of samples for validation_prompts every N steps; 0: never
    validation_prompts: tuple[str, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.grad_accum) <= 0:
            raise ConfigError("steps, batch_size and grad_accum must be positive")
        check_rates(lr=self.lr, text_lr=self.text_lr)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0) or self.warmup_steps < 0:
            raise ConfigError(f"weight_decay={self.weight_decay}, warmup_steps={self.warmup_steps}: give values >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip={self.grad_clip}: give a norm > 0, or null for no clipping")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ConfigError(f"cfg_dropout={self.cfg_dropout}: give a probability in [0, 1)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: use constant or cosine")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: use no, bf16 or fp16")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay}: give a value in (0, 1) or null")
        if self.keep_checkpoints < 1 or self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every and keep_checkpoints must be >= 1")
        if self.objective.is_flow != (self.sampling.sampler in FLOW_SAMPLER_NAMES):
            family = "a flow-* sampler" if self.objective.is_flow else "a ddpm-family sampler (not flow-*)"
            raise ConfigError(f"objective.kind={self.objective.kind} with sampling.sampler={self.sampling.sampler!r}: "
                              f"the model needs {family}, e.g. sampling.sampler="
                              f"{'flow-euler' if self.objective.is_flow else 'dpm++'}")
