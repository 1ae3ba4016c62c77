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


@dataclass(frozen=True)
class SSLEvaluatorTrainConfig:
    """The cxrgen-evaluator trained with SimCLR (Chen et al. 2020) plus its supervised labels, jointly.

    ``base`` holds the network, data, intensity jitter and optimizer; the fields here the
    self-supervised part. Views are random resized crops with a small rotation and intensity
    jitter: never a flip, and no blur or noise (the features must stay sensitive to both).
    """

    base: EvaluatorTrainConfig = field(default_factory=EvaluatorTrainConfig)
    view_size: int = 160  # side of each SimCLR view (crops keep roughly native pixel scale)
    min_crop_area: float = 0.35  # a crop covers [min_crop_area, 1] of the image area
    max_aspect: float = 4 / 3  # crop aspect ratio drawn log-uniformly in [1 / a, a]
    crop_rotation_deg: float = 10.0
    view_noise_std: float = 0.0  # per view, Gaussian pixel noise of std drawn in [0, this]; 0: none
    temperature: float = 0.2  # NT-Xent temperature tau
    projection_dim: int = 128  # SimCLR projection head output (the loss sees it; FID uses the pooled features)
    supervised_weight: float = 0.5  # loss = NT-Xent + w * masked BCE (labels, adult vs pediatric, viral vs bacterial)
    warmup_steps: int = 50
    bn_recalibration_images: int = 1024  # BN statistics re-estimated on full-size images after training
    image_cache: str | None = None  # uint8 tensor file of the decoded training images (written when absent)
    # time budgets of the training loop: the cosine schedule ends and training stops when the first of
    # epochs, CPU time (process, all threads) and wall time runs out
    max_cpu_seconds: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.view_size < 32 or not 0.0 < self.min_crop_area <= 1.0 or self.max_aspect < 1.0:
            raise ConfigError("view_size >= 32, min_crop_area in (0, 1] and max_aspect >= 1 are required")
        if self.temperature <= 0 or self.supervised_weight < 0 or self.projection_dim <= 0:
            raise ConfigError("temperature and projection_dim must be positive, supervised_weight >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """One ``cxrgen evaluate`` run: model, prompts, real reference set, metric settings, outputs."""

    model: str | None = None  # model directory or hub id; None: the packaged default model
    prompts: str = ""  # CSV (or parquet) with a 'prompt' column; optional image_path and label columns
    real_manifest: str = ""  # manifest of the real reference images (FID, held-out rows for memorization)
    out_dir: str = "runs/evaluate"  # generated/ images, report.md, plots, grids
    json_path: str | None = None  # where the metrics JSON goes; None: out_dir/metrics.json
    extractors: tuple[str, ...] = ("cxrgen-evaluator",)  # FID / KID feature spaces
    extractor_weights: tuple[str, ...] = ()  # NAME=WEIGHTS for extractors other than cxrgen-evaluator
    evaluator: str | None = None  # cxrgen-evaluator folder; None: the one shipped in cxrgen/models/evaluator
    train_manifest: str | None = None  # the model's training rows (memorization); None: its train_config.yaml
    reid_model: str | None = None  # re-identification network (`cxrgen train-reid`); None: the shipped one
    image_root: str | None = None  # relative image paths join this; None: the table's own folder
    n_per_prompt: int = 4  # images per prompt (RoentGen's MS-SSIM protocol)
    steps: int | None = None  # None: the model's sampling settings (model_index.json)
    sampler: str | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    batch_size: int = 4  # images of one prompt sampled together (throughput is measured at this size)
    eval_batch_size: int = 64  # images per feature-extractor batch
    max_real: int | None = None  # seeded random subset of the real reference rows; None: all
    heldout_splits: tuple[str, ...] = ("test", "validate")  # real rows that calibrate the copy threshold
    train_split: str = "train"
    copy_quantile: float = 0.99  # held-out-vs-train similarity quantile above which a sample is a copy
    top_pairs: int = 8  # nearest (generated, training) pairs saved as a grid
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # clipped to the smaller set (with a warning)
    grid_prompts: int = 8  # prompts shown in the report's sample grid
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    progress: bool = True
    # realism metrics (issue 18): C2ST, SWD, PRDC
    c2st_folds: int = 5  # cross-validation folds of the classifier two-sample test
    c2st_epochs: int = 20  # CNN epochs per fold
    realism_max_images: int = 512  # seeded random subset of each set for C2ST and SWD (cost grows with it)
    prdc_k: int = 5  # nearest neighbours of PRDC (Naeem et al. 2020)

    def __post_init__(self) -> None:
        if min(self.c2st_folds - 1, self.c2st_epochs, self.realism_max_images, self.prdc_k) < 1:
            raise ConfigError("c2st_folds must be >= 2; c2st_epochs, realism_max_images and prdc_k >= 1")
        if self.n_per_prompt < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("n_per_prompt, batch_size and eval_batch_size must be >= 1")
        if not self.extractors:
            raise ConfigError("extractors is empty: name at least one, e.g. cxrgen-evaluator")
        if not 0.0 < self.copy_quantile < 1.0:
            raise ConfigError(f"copy_quantile={self.copy_quantile}: give a value strictly between 0 and 1")
        if min(self.top_pairs, self.kid_subsets, self.kid_subset_size, self.grid_prompts) < 1:
            raise ConfigError("top_pairs, kid_subsets, kid_subset_size and grid_prompts must be >= 1")
        if self.max_real is not None and self.max_real < 2:
            raise ConfigError(f"max_real={self.max_real}: give at least 2 (or null for all rows)")
        for item in self.extractor_weights:
            if "=" not in item:
                raise ConfigError(f"extractor weights {item!r}: write them as NAME=WEIGHTS")


@dataclass(frozen=True)
class ReidTrainConfig:
    """One ``cxrgen train-reid`` run: a Siamese re-identification network trained on same-patient pairs.

    Identities are patients (rows sharing a patient_id or an identical image file); the network is
    trained on the ``train_split`` patients and its pair AUROC reported on the ``heldout_splits`` ones.
    """

    manifests: tuple[str, ...] = ()  # manifests from `cxrgen prepare` (image_path, patient_id, split)
    image_root: str | None = None  # relative image paths join this; None: the manifest's folder
    out_dir: str = "runs/reid"
    train_split: str = "train"
    heldout_splits: tuple[str, ...] = ("validate", "test")  # held-out patients: pair AUROC in metrics.json
    exclude_views: tuple[str, ...] = ("LATERAL",)  # generated images are frontal: lateral rows are left out
    # network (saved in its config.json)
    image_size: int = 64
    width: int = 16  # channels of the first conv stage (doubled at each of 4 stride-2 stages)
    embed_dim: int = 64
    # training: each batch holds ``patients_per_batch`` patients with ``images_per_patient`` images each
    epochs: int = 20
    patients_per_batch: int = 32
    images_per_patient: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True  # the evaluator's small affine + intensity jitter (never a flip)
    hard_negatives: bool = False  # each batch within one source + finding (measured worse: docs/privacy.md)
    max_train_images: int | None = None  # seeded random subset of the training rows; None: all
    max_test_pairs: int = 200_000  # different-patient pairs scored for the AUROC (seeded subset)
    eval_batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ConfigError(f"image_size={self.image_size}: give a multiple of 16 (4 stride-2 stages), e.g. 64")
        if min(self.width, self.embed_dim, self.epochs, self.patients_per_batch, self.eval_batch_size) < 1:
            raise ConfigError("width, embed_dim, epochs, patients_per_batch and eval_batch_size must be >= 1")
        if self.images_per_patient < 2:
            raise ConfigError(f"images_per_patient={self.images_per_patient}: give at least 2 (a same-patient pair)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr={self.lr}, weight_decay={self.weight_decay}: need lr > 0, weight_decay >= 0")
        if self.max_train_images is not None and self.max_train_images < 2:
            raise ConfigError(f"max_train_images={self.max_train_images}: give at least 2 or null")
