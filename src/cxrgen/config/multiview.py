"""Configs of CoDi XR's multi-view training (``cxrgen train-multiview CONFIG``): the ``joint`` stage.

The joint U-ViT (UniDiffuser-style) is one stage of ``cxrgen train-multiview``; the report autoencoder
and aligned-encoder stages add their own dataclasses beside ``JointStageConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrgen.config.sampling import SamplingConfig
from cxrgen.config.training import ScheduleConfig, check_rates
from cxrgen.errors import ConfigError

MULTIVIEW_STAGES: tuple[str, ...] = ("report_ae", "aligned", "joint")


@dataclass(frozen=True)
class MultiviewDataConfig:
    """Where the (frontal, lateral, report, truth) triplets come from."""

    twin_dirs: tuple[str, ...] = ()  # folders written by `cxrgen twin` (twin.csv + images/)
    image_size: int = 64  # side of the square images (resized + center-cropped)

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"data.image_size={self.image_size}: give a side between 16 and 1024 pixels")


@dataclass(frozen=True)
class JointStageConfig:
    """The joint U-ViT over frontal, lateral and report latents: parts, per-modality roles, optimiser."""

    denoiser: str = "joint-uvit-xs"  # a cxrgen.denoisers.registry.JOINT_DENOISERS preset
    autoencoder: str | None = None  # image codec folder (None: the packaged default model's)
    model_image_size: int = 128  # views are resized to this side for the codec (64 px twin -> 128: 16x16 latents)
    init_from: str | None = None  # start from a saved joint model (its folder or its denoiser/ folder): fine-tuning
    report_codec: str | None = None  # report codec folder (report AE); None: the hashed stand-in below
    report_tokens: int = 4  # the stand-in's latent (L_r, D_r)
    report_dim: int = 64
    given_prob: float = 0.25  # share of (sample, modality) pairs given clean at model time 0
    absent_prob: float = 0.15  # share held at pure noise, model time T (the marginal that guidance uses)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_train_studies: int | None = None  # use only the first N training studies (encoding costs CPU time)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.03
    warmup_steps: int = 100
    ema_decay: float = 0.999  # None-like 0 switches EMA off
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(sampler="ddim", steps=25,
                                                                            guidance_scale=1.5))
    log_every: int = 100

    def __post_init__(self) -> None:
        check_rates(**{"joint.lr": self.lr})
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ConfigError("joint.steps and joint.batch_size must be >= 1, joint.warmup_steps >= 0")
        if not (0 <= self.given_prob and 0 <= self.absent_prob and self.given_prob + self.absent_prob < 1):
            raise ConfigError(f"joint.given_prob={self.given_prob}, joint.absent_prob={self.absent_prob}: "
                              "give shares >= 0 summing below 1 (something must be noised)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"joint.ema_decay={self.ema_decay}: give a value in [0, 1) (0: no EMA)")


@dataclass(frozen=True)
class MultiviewTrainConfig:
    """One `cxrgen train-multiview` run: which stage, on which data, written where."""

    stage: str = "joint"
    data: MultiviewDataConfig = field(default_factory=MultiviewDataConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    out_dir: str = "out/multiview"
    seed: int = 0
    threads: int = 1  # torch CPU threads while training
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in MULTIVIEW_STAGES:
            raise ConfigError(f"stage={self.stage!r}: use one of {list(MULTIVIEW_STAGES)}")
        if self.threads < 1:
            raise ConfigError(f"threads={self.threads}: give at least 1")
