"""Config of the augmentation study (RoentGen sec. 4.4; RoentGen-v2: synthetic pre-training, real fine-tuning).

One classifier is trained on real only, synthetic only, real + synthetic and synthetic-then-real
images at matched sizes over several seeds, and scored on a held-out real test split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cxrgen.config.base import load_config
from cxrgen.errors import ConfigError

REAL, SYNTHETIC, COMBINED, PRETRAIN = "real", "synthetic", "real+synthetic", "synthetic-then-real"
#: Training arms, in report order: which images the classifier learns from.
ARMS: tuple[str, ...] = (REAL, SYNTHETIC, COMBINED, PRETRAIN)


@dataclass(frozen=True)
class AugmentStudyConfig:
    """One ``cxrgen augment-study`` run: the real task, where synthetic images come from, the classifier.

    The task is multi-class (one categorical ``label_column``, e.g. the pediatric ``finding``) or
    multi-label (``label_columns``: CheXpert 1/0 columns, e.g. the CT twin's findings); exactly one.
    Synthetic images come from ``model`` (None: the packaged default), generated from the prompts of
    training rows and cached under ``cache_dir``, or from ``synthetic_csv`` (image_path + labels).
    """

    manifest: str = ""  # real manifest (`cxrgen prepare`): image_path, split, patient_id, prompt, labels
    out_dir: str = "runs/augment-study"
    label_column: str | None = "finding"  # multi-class: one categorical column
    label_columns: tuple[str, ...] = ()  # multi-label: CheXpert columns in {1, 0}
    classes: tuple[str, ...] = ()  # multi-class values to keep (default: every value of the train split)
    view: str | None = None  # keep only rows of this view (e.g. PA for the twin); None: all rows
    image_root: str | None = None  # relative image paths join this; None: the table's own folder
    train_split: str = "train"
    test_split: str = "test"  # must hold patients neither the classifier nor the generative model saw
    # sizes: n per class (multi-class) or n rows (multi-label); real + synthetic is n real + n synthetic
    n_real: int = 150
    n_synthetic: int | None = None  # None: n_real (matched)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    # synthetic images
    model: str | None = None  # generative model folder or hub id; None: the packaged default
    synthetic_csv: str | None = None  # instead of a model: CSV with image_path and the label column(s)
    cache_dir: str = "runs/augment-study/synthetic"  # generated images, reused by a rerun
    model_train_manifests: tuple[str, ...] = ()  # the model's training manifests (default: its train_config.yaml)
    steps: int | None = None  # sampling settings; None: the model's own
    sampler: str | None = None
    guidance_scale: float | None = None
    generation_seed: int = 0
    generation_batch_size: int = 4
    device: str = "cpu"
    # the classifier: a DenseNet-BC of cxrgen.evaluate.networks at image_size px
    arch: str = "densenet-tiny"
    image_size: int = 64
    epochs: int = 20
    matched_steps: bool = False  # real-only and synthetic-only arms train as many steps as the n + m arms
    finetune_epochs: int | None = None  # synthetic-then-real: real epochs after pre-training; None: epochs
    batch_size: int = 32
    lr: float = 1e-3
    finetune_lr: float | None = None  # None: lr
    weight_decay: float = 1e-4
    # statistics
    bootstrap: int = 1000  # resamples of the test images
    confidence: float = 0.95
    progress: bool = True

    def __post_init__(self) -> None:
        if bool(self.label_column) == bool(self.label_columns):
            raise ConfigError("give exactly one of label_column (multi-class, e.g. finding) and label_columns "
                              "(multi-label CheXpert columns, e.g. Pleural Effusion,Pneumothorax)")
        if self.n_real < 2 or (self.n_synthetic is not None and self.n_synthetic < 2):
            raise ConfigError(f"n_real={self.n_real}, n_synthetic={self.n_synthetic}: give at least 2 images")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}: give one or more distinct seeds")
        unknown = [a for a in self.arms if a not in ARMS]
        if not self.arms or unknown or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"arms={list(self.arms)}: choose distinct arms from {list(ARMS)}")
        if self.image_size < 32 or min(self.epochs, self.batch_size, self.generation_batch_size) < 1:
            raise ConfigError("image_size must be >= 32; epochs, batch_size and generation_batch_size >= 1")
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs}: give >= 1 or null for epochs")
        if self.lr <= 0 or (self.finetune_lr is not None and self.finetune_lr <= 0) or self.weight_decay < 0:
            raise ConfigError("lr and finetune_lr must be > 0, weight_decay >= 0")
        if self.bootstrap < 100 or not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"bootstrap={self.bootstrap}, confidence={self.confidence}: need >= 100 resamples "
                              "and a level in (0.5, 1)")

    @property
    def multiclass(self) -> bool:
        """One categorical label (softmax classifier) rather than independent binary labels."""
        return bool(self.label_column)

    @property
    def synthetic_size(self) -> int:
        """Synthetic images per class (multi-class) or in all (multi-label)."""
        return self.n_real if self.n_synthetic is None else self.n_synthetic


def augment_study_config(path: str | None = None, overrides: list[str] | None = None,
                         **flags: object) -> AugmentStudyConfig:
    """The study's config: the YAML at ``path`` (or the defaults), then ``key=value`` overrides, then every
    flag that is not None (command-line options win over the file). A flag naming one kind of label
    (``label_column`` or ``label_columns``) clears the other."""
    cfg = load_config(AugmentStudyConfig, path, overrides)
    given = {k: v for k, v in flags.items() if v is not None}
    if given.get("label_columns"):
        given["label_column"] = None
    elif given.get("label_column"):
        given["label_columns"] = ()
    cfg = dataclasses.replace(cfg, **given)
    if not cfg.manifest:
        raise ConfigError("no real manifest: give it as the first argument or as `manifest:` in --config")
    return cfg
