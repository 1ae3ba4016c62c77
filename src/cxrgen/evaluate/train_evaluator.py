"""Train the cxrgen-evaluator: multi-label masked BCE on manifest images, per-class AUROC on held-out splits.

Labels are CheXpert values (1, 0, -1 uncertain, NaN not mentioned). A NaN label is never a target:
the pediatric set, for instance, says nothing about effusions, so reading NaN as "negative" would
teach the network a falsehood. Uncertain labels are masked as well by default (U-Ignore); U-Ones /
U-Zeros (Irvin et al. 2019, CheXpert, sec. 4) are options. Augmentation is a small random affine
(rotation, zoom, shift; never a reflection) and an intensity jitter: a chest X-ray is never flipped,
since laterality is part of the findings. Every random draw comes from a seeded torch.Generator.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from cxrgen.config import EvaluatorTrainConfig, ImageConfig, load_config, save_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.data.images import from_unit_range, load_image, to_unit_range
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.alignment import per_class_auroc
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.networks import count_parameters

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0  # CheXpert label values; NaN = not mentioned
UNCERTAIN_AS = {"ones": POSITIVE, "zeros": NEGATIVE}  # U-Ones / U-Zeros


@dataclass
class LabelledSplit:
    """The rows of one split: image paths, labels (N, C) in {1, 0, -1, NaN}, and each row's source."""

    paths: list[str]
    labels: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def read_split(manifests: Sequence[str | Path], split: str, class_names: Sequence[str],
               image_root: str | Path | None = None) -> LabelledSplit:
    """Rows of ``split`` with an image path; relative paths join image_root or the manifest's folder."""
    paths: list[str] = []
    labels: list[np.ndarray] = []
    sources: list[str] = []
    for manifest in manifests:
        manifest = Path(manifest)
        df = read_manifest(manifest)
        missing = [c for c in ("image_path", "split", *class_names) if c not in df.columns]
        if missing:
            raise MissingColumnsError(f"manifest {manifest} lacks columns {missing}; build it with `cxrgen "
                                      "prepare` and name only CheXpert columns in model.class_names")
        df = df[(df["split"].astype(str) == split) & (df["image_path"].astype(str).str.len() > 0)]
        base = Path(image_root) if image_root is not None else manifest.parent
        paths += [str(p if Path(p).is_absolute() else base / p) for p in df["image_path"].astype(str)]
        labels.append(df[list(class_names)].to_numpy(dtype=np.float64))
        source = df["source"].astype(str) if "source" in df.columns else [manifest.parent.name] * len(df)
        sources += list(source)
    matrix = np.concatenate(labels) if labels else np.zeros((0, len(class_names)))
    return LabelledSplit(paths, matrix, sources)


def class_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per class: certain positives, certain negatives, uncertain and missing labels."""
    return {
        name: {"positive": int((col == POSITIVE).sum()), "negative": int((col == NEGATIVE).sum()),
               "uncertain": int((col == UNCERTAIN).sum()), "missing": int(np.isnan(col).sum())}
        for name, col in zip(class_names, labels.T, strict=True)
    }


def check_counts(counts: dict[str, dict[str, int]], minimum: int) -> None:
    """Warn about classes with too few certain positives or negatives to learn (or score) them."""
    for name, c in counts.items():
        if min(c["positive"], c["negative"]) < minimum:
            log.warning("class %r has %d positive and %d negative training labels (< %d): it will be learned "
                        "poorly; drop it from model.class_names or add data", name, c["positive"],
                        c["negative"], minimum)


class LabelledImages(Dataset):
    """Item i: ((1, H, W) image in [low, high], (C,) labels with NaN), decoded on demand."""

    def __init__(self, split: LabelledSplit, image_cfg: ImageConfig) -> None:
        self.split, self.image_cfg = split, image_cfg
        self.labels = torch.from_numpy(split.labels).float()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image(self.split.paths[i], self.image_cfg), self.labels[i]


def make_dataset(split: LabelledSplit, image_cfg: ImageConfig, preload: bool, what: str,
                 progress: bool = True) -> Dataset:
    """The split as a dataset: decoded once into memory (preload) or read per item."""
    lazy = LabelledImages(split, image_cfg)
    if not preload:
        return lazy
    images = torch.stack([lazy[i][0] for i in tqdm(range(len(lazy)), desc=f"loading {what} images",
                                                   disable=not progress)])  # (N, 1, H, W)
    return TensorDataset(images, lazy.labels)


# --------------------------------------------------------------------------------------------
# Loss and augmentation
# --------------------------------------------------------------------------------------------
def label_targets(labels: torch.Tensor, uncertain: str = "ignore") -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask) from CheXpert labels (B, C): NaN always masked; -1 masked or mapped (U-Ones/Zeros)."""
    if uncertain in UNCERTAIN_AS:
        labels = torch.where(labels == UNCERTAIN, torch.full_like(labels, UNCERTAIN_AS[uncertain]), labels)
    elif uncertain != "ignore":
        raise ConfigError(f"uncertain={uncertain!r}: use ignore, ones or zeros")
    mask = (labels == POSITIVE) | (labels == NEGATIVE)  # drops NaN and (ignored) uncertain
    return torch.where(mask, labels, torch.zeros_like(labels)), mask


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the unmasked (image, class) entries only (0 when none)."""
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, C)
    weight = mask.to(per_entry.dtype)
    return (per_entry * weight).sum() / weight.sum().clamp_min(1.0)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform draws in [-bound, bound]."""
    return (2 * torch.rand(shape, generator=generator) - 1) * bound


def random_affine(images: torch.Tensor, cfg: EvaluatorTrainConfig, image_cfg: ImageConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation, zoom and shift (positive determinant: never a reflection); pads with ``low``."""
    b = images.shape[0]
    angle = _uniform((b,), math.radians(cfg.max_rotation_deg), generator)
    scale = 1.0 + _uniform((b,), cfg.max_scale, generator)
    shift = _uniform((b, 2), 2 * cfg.max_translate, generator)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(images)  # (B, 2, 3); det = 1 / scale^2 > 0
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    moved = F.grid_sample(images - image_cfg.low, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + image_cfg.low


def jitter_intensity(images: torch.Tensor, cfg: EvaluatorTrainConfig, image_cfg: ImageConfig,
                     generator: torch.Generator) -> torch.Tensor:
    """Per-image gamma, gain and offset on [0, 1]-mapped pixels, clamped back to the range."""
    b = images.shape[0]
    log_gamma = _uniform((b, 1, 1, 1), math.log1p(cfg.gamma_jitter), generator).to(images)
    gain = (1.0 + _uniform((b, 1, 1, 1), cfg.intensity_jitter, generator)).to(images)
    offset = _uniform((b, 1, 1, 1), cfg.intensity_jitter, generator).to(images)
    unit = to_unit_range(images, image_cfg).clamp(0.0, 1.0) ** torch.exp(log_gamma)
    return from_unit_range((unit * gain + offset).clamp(0.0, 1.0), image_cfg)


def augment(images: torch.Tensor, cfg: EvaluatorTrainConfig, image_cfg: ImageConfig,
            generator: torch.Generator) -> torch.Tensor:
    """Random affine then intensity jitter (B, 1, H, W) -> same shape; no flip, ever."""
    return jitter_intensity(random_affine(images, cfg, image_cfg, generator), cfg, image_cfg, generator)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: CXREvaluator, loader: DataLoader, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and labels (N, C) of every item of a (image, labels) loader, model in eval mode."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for images, batch_labels in tqdm(loader, desc="scoring", disable=not progress):
        probs.append(torch.sigmoid(model.net(images.to(model.device))).cpu())
        labels.append(batch_labels)
    model.train(was_training)
    return torch.cat(probs).double().numpy(), torch.cat(labels).double().numpy()


def score_split(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                sources: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """Per-class AUROC on the whole split and on each source (collection) alone."""
    overall = per_class_auroc(probs, labels, class_names)
    src = np.asarray(sources)
    by_source = {s: per_class_auroc(probs[src == s], labels[src == s], class_names) for s in sorted(set(sources))}
    return overall, by_source


def _loader(dataset: Dataset, cfg: EvaluatorTrainConfig, shuffle: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(cfg.seed) if shuffle else None
    return DataLoader(dataset, batch_size=cfg.batch_size if shuffle else cfg.eval_batch_size, shuffle=shuffle,
                      generator=gen, num_workers=cfg.num_workers)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_one_epoch(model: CXREvaluator, loader: DataLoader, opt: torch.optim.Optimizer,
                    cfg: EvaluatorTrainConfig, generator: torch.Generator, desc: str) -> float:
    """One pass over the training loader: augment, masked BCE, AdamW step; returns the mean loss."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=desc, disable=not cfg.progress)
    for images, labels in bar:
        images = augment(images.to(model.device), cfg, model.cfg.image, generator)  # draws on the CPU
        targets, mask = label_targets(labels.to(model.device), cfg.uncertain)
        loss = masked_bce(model.net(images), targets, mask)
        if not torch.isfinite(loss):
            raise DataError(f"training loss is {loss.item()}: check the images and labels, or lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * images.shape[0]
        n += images.shape[0]
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(n, 1)


def _held_out(cfg: EvaluatorTrainConfig, split_name: str, what: str) -> tuple[LabelledSplit, Dataset | None]:
    split = read_split(cfg.manifests, split_name, cfg.model.class_names, cfg.image_root)
    if not len(split):
        log.warning("no %r rows in the manifests: no %s AUROC", split_name, what)
        return split, None
    return split, make_dataset(split, cfg.model.image, cfg.preload, what, cfg.progress)


def _train_split(cfg: EvaluatorTrainConfig) -> LabelledSplit:
    split = read_split(cfg.manifests, cfg.train_split, cfg.model.class_names, cfg.image_root)
    if not len(split):
        raise DataError(f"no {cfg.train_split!r} rows with an image in manifests {list(cfg.manifests)}; "
                        "build them with `cxrgen prepare` or set train_split")
    if cfg.max_train_images is not None and len(split) > cfg.max_train_images:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(split), cfg.max_train_images, replace=False))
        split = LabelledSplit([split.paths[i] for i in keep], split.labels[keep], [split.sources[i] for i in keep])
    return split


def fit(model: CXREvaluator, cfg: EvaluatorTrainConfig, train_loader: DataLoader,
        val_data: Dataset | None) -> list[dict]:
    """AdamW over ``cfg.epochs`` epochs; the validate mean AUROC after each (progress only)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        loss = train_one_epoch(model, train_loader, opt, cfg, gen, desc=f"evaluator epoch {epoch}/{cfg.epochs}")
        entry = {"epoch": epoch, "loss": loss}
        if val_data is not None:
            probs, labels = predict(model, _loader(val_data, cfg, shuffle=False))
            entry["validate_auroc_mean"] = per_class_auroc(probs, labels, cfg.model.class_names)["mean"]
        history.append(entry)
        log.info("epoch %d: %s", epoch, entry)
    return history


def train_evaluator(cfg: EvaluatorTrainConfig, out_dir: str | Path | None = None) -> dict:
    """Train, score the validate and test splits, save model + configs + metrics.json; returns the metrics."""
    if not cfg.manifests:
        raise ConfigError("no training data: set manifests to files written by `cxrgen prepare`")
    out_dir = Path(out_dir if out_dir is not None else cfg.out_dir)
    start = time.perf_counter()
    train = _train_split(cfg)
    counts = class_counts(train.labels, cfg.model.class_names)
    check_counts(counts, cfg.min_class_count)
    train_data = make_dataset(train, cfg.model.image, cfg.preload, "train", cfg.progress)
    train_loader = _loader(train_data, cfg, shuffle=True)
    held_out = {"validate": _held_out(cfg, cfg.validate_split, "validate"),
                "test": _held_out(cfg, cfg.test_split, "test")}
    model = CXREvaluator(cfg.model, generator=torch.Generator().manual_seed(cfg.seed)).to(_device(cfg.device))
    log.info("cxrgen-evaluator %s: %d parameters, %d training images, classes %s", model.cfg.arch,
             count_parameters(model), len(train), list(cfg.model.class_names))
    history = fit(model, cfg, train_loader, held_out["validate"][1])
    metrics = {"name": model.name, "arch": model.cfg.arch, "image_size": cfg.model.image.size,
               "classes": list(cfg.model.class_names), "parameters": count_parameters(model),
               "feature_dim": model.feature_dim, "train_images": len(train), "train_counts": counts,
               "epochs": cfg.epochs, "history": history}
    for name, (split, data) in held_out.items():
        if data is not None:
            probs, labels = predict(model, _loader(data, cfg, shuffle=False))
            metrics[name], metrics[f"{name}_by_source"] = score_split(probs, labels, cfg.model.class_names,
                                                                      split.sources)
            metrics[f"{name}_images"] = len(split)
    metrics["seconds"] = time.perf_counter() - start
    model.save_pretrained(out_dir)
    save_config(cfg, out_dir / TRAIN_CONFIG_NAME)
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("test AUROC %s; saved to %s", metrics.get("test", {}).get("per_class"), out_dir)
    return metrics


def run_train_evaluator(config_path: str | Path | None, overrides: list[str] | None = None,
                        out_dir: str | Path | None = None) -> dict:
    """What ``cxrgen train-evaluator CONFIG [--set k=v] [--out DIR]`` calls: YAML in, metrics out."""
    return train_evaluator(load_config(EvaluatorTrainConfig, config_path, overrides), out_dir)
