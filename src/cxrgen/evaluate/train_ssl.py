"""Train the cxrgen-evaluator with SimCLR plus its labels, so its features see texture and anatomy, not only class.

SimCLR (Chen et al. 2020, "A simple framework for contrastive learning of visual representations"):
two random views of each image, a projection head, and the NT-Xent loss (eq. 1) that makes the two
views of one image each other's nearest neighbour among the 2B - 2 views of the others. Jointly, a
masked BCE on the labels we have (CheXpert No Finding / Pneumonia, plus two training-only targets:
adult vs pediatric, and viral vs bacterial for the pediatric pneumonias).

The views are random resized crops with a small rotation and an intensity jitter. Never a flip (the
patient's right is on the image's left), and deliberately no blur and no noise: what SimCLR is
trained to ignore its features cannot see, and a realism feature space must see blur and noise.
After training, BatchNorm statistics are re-estimated on full-size un-augmented images, the size
the evaluator is used at.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cxrgen.config import SSLEvaluatorTrainConfig, load_config, save_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.data.images import load_image
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.networks import count_parameters
from cxrgen.evaluate.train_evaluator import (
    METRICS_NAME,
    LabelledSplit,
    _device,
    jitter_intensity,
    label_targets,
    masked_bce,
    read_split,
    score_split,
)

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "last-epoch"  # inside the output folder: the model after the latest finished epoch
HELDOUT_NAME = "heldout_images.json"  # file names of the validate / test images per source (never trained on)
AUX_TARGETS = ("adult", "viral")  # training-only targets: source is adult (covid), pediatric pneumonia is viral
ADULT_SOURCES = ("covid", "mimic")
PIXEL_MAX = 255


# --------------------------------------------------------------------------------------------
# Data: every training image decoded once, kept as uint8
# --------------------------------------------------------------------------------------------
def aux_labels(manifests: tuple[str, ...], split: str) -> np.ndarray:
    """(N, 2) adult / viral targets (NaN where unknown) of the rows ``read_split`` returns, in its order."""
    rows = []
    for manifest in manifests:
        df = read_manifest(Path(manifest))
        df = df[(df["split"].astype(str) == split) & (df["image_path"].astype(str).str.len() > 0)]
        source = df["source"].astype(str) if "source" in df.columns else [Path(manifest).parent.name] * len(df)
        finding = df["finding"].astype(str).str.lower() if "finding" in df.columns else [""] * len(df)
        for src, text in zip(source, finding, strict=True):
            viral = 1.0 if "viral" in text else 0.0 if "bacterial" in text else np.nan
            rows.append((1.0 if src in ADULT_SOURCES else 0.0, viral))
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(AUX_TARGETS))


def decode_uint8(split: LabelledSplit, cfg: SSLEvaluatorTrainConfig) -> torch.Tensor:
    """Every image of ``split`` at the evaluator's size as uint8 (N, 1, S, S); cached in ``cfg.image_cache``."""
    image_cfg = cfg.base.model.image
    cache = Path(cfg.image_cache) if cfg.image_cache else None
    if cache is not None and cache.is_file():
        images = torch.load(cache, weights_only=True)  # a tensor this function wrote
        if images.shape[0] == len(split) and images.shape[-1] == image_cfg.size:
            return images
        log.warning("image cache %s does not fit this split (%s); decoding again", cache, tuple(images.shape))
    out = torch.empty(len(split), 1, image_cfg.size, image_cfg.size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(split.paths, desc="decoding images", disable=not cfg.base.progress)):
        unit = (load_image(path, image_cfg) - image_cfg.low) / (image_cfg.high - image_cfg.low)
        out[i] = (unit.clamp(0, 1) * PIXEL_MAX).round().to(torch.uint8)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, cache)
    return out


def to_pixels(images: torch.Tensor, cfg: SSLEvaluatorTrainConfig) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float in [image.low, image.high]."""
    image_cfg = cfg.base.model.image
    return images.float() / PIXEL_MAX * (image_cfg.high - image_cfg.low) + image_cfg.low


# --------------------------------------------------------------------------------------------
# Views and loss
# --------------------------------------------------------------------------------------------
def random_resized_crop(images: torch.Tensor, cfg: SSLEvaluatorTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Per image a crop of random area, aspect, position and small rotation, resampled to view_size.

    The affine map has determinant sx * sy > 0: never a reflection. Outside the image pads with ``low``.
    """
    b, low = images.shape[0], cfg.base.model.image.low
    area = cfg.min_crop_area + (1 - cfg.min_crop_area) * torch.rand(b, generator=generator)
    aspect = torch.exp((2 * torch.rand(b, generator=generator) - 1) * math.log(cfg.max_aspect))
    sx, sy = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # half-sides, [-1, 1] units
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - sx)
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - sy)
    angle = (2 * torch.rand(b, generator=generator) - 1) * math.radians(cfg.crop_rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, cx], 1), torch.stack([sx * sin, sy * cos, cy], 1)], 1)
    grid = F.affine_grid(theta.to(images), [b, 1, cfg.view_size, cfg.view_size], align_corners=False)
    return F.grid_sample(images - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low


def make_view(images: torch.Tensor, cfg: SSLEvaluatorTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """One SimCLR view (B, 1, view_size, view_size): crop + rotation, gamma / gain / offset, optional mild noise."""
    view = jitter_intensity(random_resized_crop(images, cfg, generator), cfg.base, cfg.base.model.image, generator)
    if cfg.view_noise_std <= 0:
        return view
    std = cfg.view_noise_std * torch.rand(view.shape[0], 1, 1, 1, generator=generator)
    image_cfg = cfg.base.model.image
    return (view + std * torch.randn(view.shape, generator=generator)).clamp(image_cfg.low, image_cfg.high)


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, eq. 1) of projections (2B, D) whose rows i and i + B are two views of one image."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature  # (2B, 2B) cosine similarities
    sim = sim.masked_fill(torch.eye(z.shape[0], dtype=torch.bool, device=z.device), float("-inf"))
    half = z.shape[0] // 2
    positives = torch.cat([torch.arange(half, 2 * half), torch.arange(0, half)]).to(z.device)
    return F.cross_entropy(sim, positives)


class SSLHeads(nn.Module):
    """Training-only heads on the pooled features: the SimCLR projection MLP and the auxiliary targets."""

    def __init__(self, feature_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(),
                                        nn.Linear(feature_dim, projection_dim))
        self.aux = nn.Linear(feature_dim, len(AUX_TARGETS))


def joint_loss(model: CXREvaluator, heads: SSLHeads, views: torch.Tensor, labels: torch.Tensor,
               cfg: SSLEvaluatorTrainConfig) -> tuple[torch.Tensor, float, float]:
    """NT-Xent + w * masked BCE on both views; labels (B, C + 2). Returns (loss, nt-xent, bce)."""
    h = model.net.features(views)  # (2B, F)
    contrastive = nt_xent(heads.projection(h), cfg.temperature)
    logits = torch.cat([model.net.classifier(h), heads.aux(h)], dim=1)  # (2B, C + 2)
    targets, mask = label_targets(labels.repeat(2, 1), cfg.base.uncertain)
    supervised = masked_bce(logits, targets, mask)
    return contrastive + cfg.supervised_weight * supervised, contrastive.item(), supervised.item()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def lr_at(step: int, total: int, cfg: SSLEvaluatorTrainConfig, budget_used: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to zero (Loshchilov & Hutter 2017) over the steps or the CPU
    budget, whichever runs out first (``budget_used`` in [0, 1])."""
    if step < cfg.warmup_steps:
        return cfg.base.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps), budget_used)
    return cfg.base.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _budget_used(start_cpu: float, start: float, cfg: SSLEvaluatorTrainConfig) -> float:
    """The larger share spent of ``max_cpu_seconds`` (process CPU time, all threads) and ``max_seconds`` (wall)."""
    cpu = 0.0 if cfg.max_cpu_seconds is None else (time.process_time() - start_cpu) / cfg.max_cpu_seconds
    wall = 0.0 if cfg.max_seconds is None else (time.perf_counter() - start) / cfg.max_seconds
    return max(cpu, wall)


def fit_ssl(model: CXREvaluator, heads: SSLHeads, images: torch.Tensor, labels: torch.Tensor,
            cfg: SSLEvaluatorTrainConfig, checkpoint: Path | None = None) -> list[dict]:
    """AdamW over the epochs (or until a time budget); one log entry per epoch with the mean losses.

    ``checkpoint``: a folder the evaluator is saved to after every epoch (BN statistics still those of the crops).
    """
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.base.lr, weight_decay=cfg.base.weight_decay)
    gen = torch.Generator().manual_seed(cfg.base.seed)
    batch = cfg.base.batch_size
    per_epoch = len(images) // batch
    if per_epoch == 0:
        raise DataError(f"{len(images)} training images are fewer than batch_size={batch}: lower batch_size")
    total, step, start, history = per_epoch * cfg.base.epochs, 0, time.perf_counter(), []
    start_cpu = time.process_time()
    model.train()
    heads.train()
    for epoch in range(1, cfg.base.epochs + 1):
        order = torch.randperm(len(images), generator=gen)
        sums = np.zeros(3)
        bar = tqdm(range(per_epoch), desc=f"ssl epoch {epoch}/{cfg.base.epochs}", disable=not cfg.base.progress)
        for i in bar:
            idx = order[i * batch:(i + 1) * batch]
            x = to_pixels(images[idx], cfg)  # (B, 1, S, S)
            views = torch.cat([make_view(x, cfg, gen), make_view(x, cfg, gen)]).to(model.device)  # (2B, 1, V, V)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg, _budget_used(start_cpu, start, cfg))
            loss, contrastive, supervised = joint_loss(model, heads, views, labels[idx].to(model.device), cfg)
            if not torch.isfinite(loss):
                raise DataError(f"training loss is {loss.item()}: check the images and labels, or lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums += (loss.item(), contrastive, supervised)
            bar.set_postfix(ntxent=f"{contrastive:.3f}", bce=f"{supervised:.3f}")
            if _budget_used(start_cpu, start, cfg) >= 1.0:
                break
        n = i + 1
        history.append({"epoch": epoch, "steps": n, "loss": sums[0] / n, "nt_xent": sums[1] / n,
                        "bce": sums[2] / n, "seconds": time.perf_counter() - start,
                        "cpu_seconds": time.process_time() - start_cpu})
        log.info("epoch %d: %s", epoch, history[-1])
        if checkpoint is not None:
            model.save_pretrained(checkpoint)
        if _budget_used(start_cpu, start, cfg) >= 1.0:
            log.warning("stopped at the time budget (max_cpu_seconds=%s, max_seconds=%s) in epoch %d",
                        cfg.max_cpu_seconds, cfg.max_seconds, epoch)
            break
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: CXREvaluator, images: torch.Tensor, cfg: SSLEvaluatorTrainConfig) -> None:
    """Re-estimate every BN's running mean and variance (cumulative average) on full-size images."""
    norms = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.net.train()
    for batch in images[:cfg.bn_recalibration_images].split(cfg.base.eval_batch_size):
        model.net.features(to_pixels(batch, cfg).to(model.device))
    model.eval()


@torch.no_grad()
def score_images(model: CXREvaluator, split: LabelledSplit, cfg: SSLEvaluatorTrainConfig) -> tuple[dict, dict]:
    """Per-class AUROC of the evaluator on a held-out split (overall and per source)."""
    images = decode_uint8(split, SSLEvaluatorTrainConfig(base=cfg.base))  # never the training cache
    probs = torch.cat([model.probabilities(to_pixels(b, cfg)).cpu()
                       for b in images.split(cfg.base.eval_batch_size)])
    return score_split(probs.double().numpy(), split.labels, cfg.base.model.class_names, split.sources)


def train_ssl_evaluator(cfg: SSLEvaluatorTrainConfig, out_dir: str | Path | None = None) -> dict:
    """Train (SimCLR + labels), recalibrate BN, score validate and test AUROC, save; returns the metrics."""
    base = cfg.base
    if not base.manifests:
        raise ConfigError("no training data: set base.manifests to files written by `cxrgen prepare`")
    out_dir = Path(out_dir if out_dir is not None else base.out_dir)
    start = time.perf_counter()
    train = read_split(base.manifests, base.train_split, base.model.class_names, base.image_root)
    if not len(train):
        raise DataError(f"no {base.train_split!r} rows with an image in {list(base.manifests)}")
    labels = torch.from_numpy(np.concatenate([train.labels, aux_labels(base.manifests, base.train_split)], 1)).float()
    images = decode_uint8(train, cfg)
    model = CXREvaluator(base.model, generator=torch.Generator().manual_seed(base.seed)).to(_device(base.device))
    heads = SSLHeads(model.feature_dim, cfg.projection_dim).to(model.device)
    log.info("cxrgen-evaluator %s (SimCLR + labels): %d parameters, %d training images", model.cfg.arch,
             count_parameters(model), len(train))
    history = fit_ssl(model, heads, images, labels, cfg, out_dir / CHECKPOINT_FOLDER)
    recalibrate_batchnorm(model, images, cfg)
    metrics = {"name": model.name, "arch": model.cfg.arch, "objective": "simclr+labels",
               "image_size": base.model.image.size, "classes": list(base.model.class_names),
               "aux_targets": list(AUX_TARGETS), "parameters": count_parameters(model),
               "feature_dim": model.feature_dim, "train_images": len(train), "history": history}
    heldout: dict[str, dict[str, list[str]]] = {}
    for name in (base.validate_split, base.test_split):
        split = read_split(base.manifests, name, base.model.class_names, base.image_root)
        if len(split):
            metrics[name], metrics[f"{name}_by_source"] = score_images(model, split, cfg)
            metrics[f"{name}_images"] = len(split)
        for path, source in zip(split.paths, split.sources, strict=True):
            heldout.setdefault(source, {}).setdefault(name, []).append(Path(path).name)
    metrics["seconds"] = time.perf_counter() - start
    model.save_pretrained(out_dir)
    save_config(cfg, out_dir / TRAIN_CONFIG_NAME)
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out_dir / HELDOUT_NAME).write_text(json.dumps(heldout) + "\n", encoding="utf-8")
    log.info("test AUROC %s; saved to %s", metrics.get(base.test_split, {}).get("per_class"), out_dir)
    return metrics


def run_train_ssl_evaluator(config_path: str | Path | None, overrides: list[str] | None = None,
                            out_dir: str | Path | None = None) -> dict:
    """What ``cxrgen train-evaluator-ssl CONFIG [--set k=v] [--out DIR]`` calls: YAML in, metrics out."""
    return train_ssl_evaluator(load_config(SSLEvaluatorTrainConfig, config_path, overrides), out_dir)
