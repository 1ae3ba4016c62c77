"""Train the re-identification network (``cxrgen train-reid``) on same-patient pairs; AUROC on held-out patients.

Identities are the linked groups of cxrgen's patient-level splits (rows sharing a patient id or an
identical image file, data.splits.link_groups), so a pair is "same patient" exactly when the split
would keep the two rows together. Each batch holds P patients with K images each (a P x K batch,
Hermans et al. 2017) plus P single-image patients as extra negatives; every pair in the batch is a
training pair, with BCE on the similarity head, positives and negatives weighted equally.
Augmentation is the evaluator's small affine and intensity jitter, never a flip (laterality).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc
from tqdm.auto import tqdm

from cxrgen.config import EvaluatorTrainConfig, ImageConfig, ReidTrainConfig, load_config, save_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.data.images import load_image
from cxrgen.data.manifest import read_manifest
from cxrgen.data.splits import link_groups
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.networks import count_parameters, init_densenet
from cxrgen.evaluate.reid import ReidNet
from cxrgen.evaluate.train_evaluator import augment

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
AUGMENT = EvaluatorTrainConfig()  # the evaluator's augmentation ranges (rotation, zoom, shift, intensity)


@dataclass
class ReidRows:
    """Images (N, 1, S, S) in [-1, 1], an identity per row (N,), each row's source and source + finding."""

    images: torch.Tensor
    identity: np.ndarray
    sources: list[str]
    strata: np.ndarray

    def __len__(self) -> int:
        return len(self.identity)


def read_identities(cfg: ReidTrainConfig) -> pd.DataFrame:
    """All usable rows of the manifests with an ``identity`` column (linked groups across every manifest)."""
    frames = []
    for manifest in cfg.manifests:
        manifest = Path(manifest)
        df = read_manifest(manifest)
        missing = [c for c in ("image_path", "split", "patient_id") if c not in df.columns]
        if missing:
            raise MissingColumnsError(f"manifest {manifest} lacks columns {missing}: build it with `cxrgen prepare`")
        df = df[df["image_path"].astype(str).str.len() > 0].copy()
        if "view" in df.columns and cfg.exclude_views:
            df = df[~df["view"].astype(str).str.upper().isin([v.upper() for v in cfg.exclude_views])]
        base = Path(cfg.image_root) if cfg.image_root is not None else manifest.parent
        df["image_path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["image_path"].astype(str)]
        source = df["source"].astype(str) if "source" in df.columns else pd.Series(manifest.parent.name, df.index)
        df["source"] = source
        df["patient_id"] = source + ":" + df["patient_id"].astype(str)  # ids of two collections never collide
        frames.append(df)
    if not frames:
        raise ConfigError("no training data: set manifests to files written by `cxrgen prepare`")
    rows = pd.concat(frames, ignore_index=True)
    link = [c for c in ("patient_id", "image_sha1") if c in rows.columns]
    rows["identity"] = link_groups(rows, link)
    return rows


def load_rows(rows: pd.DataFrame, size: int, progress: bool, what: str) -> ReidRows:
    """Decode and resize the rows' images once into memory."""
    image_cfg = ImageConfig(size=size)
    images = [load_image(p, image_cfg) for p in tqdm(rows["image_path"], desc=f"loading {what}", disable=not progress)]
    stacked = torch.stack(images) if images else torch.zeros(0, 1, size, size)  # (N, 1, S, S)
    finding = rows["finding"].astype(str) if "finding" in rows.columns else pd.Series("", rows.index)
    strata = (rows["source"].astype(str) + "/" + finding.fillna("")).to_numpy()
    return ReidRows(stacked, rows["identity"].to_numpy(), rows["source"].astype(str).tolist(), strata)


def pk_batches(identity: np.ndarray, patients: int, per_patient: int, rng: np.random.Generator,
               strata: np.ndarray | None = None) -> list[np.ndarray]:
    """One epoch of row-index batches: P multi-image patients x K images, plus P single-image patients.

    With ``strata`` (a label per row, e.g. source + finding), every batch is drawn within one stratum,
    so its negatives share the finding and only identity tells the pairs apart (hard negatives).
    """
    strata = np.zeros(len(identity), dtype=np.int64) if strata is None else pd.factorize(strata)[0]
    groups = pd.Series(np.arange(len(identity))).groupby(identity).apply(list)
    if not any(len(g) >= 2 for g in groups):
        raise DataError("no patient has two images in the training rows: re-identification needs repeat images")
    batches = []
    for stratum in np.unique(strata):
        members = [np.asarray(g) for g in groups if strata[g[0]] == stratum]
        multi = [g for g in members if len(g) >= 2]
        singles = rng.permutation([g[0] for g in members if len(g) == 1]).astype(np.int64)
        order = rng.permutation(len(multi))
        for b, start in enumerate(range(0, len(order), patients)):
            chosen = [rng.choice(multi[i], size=min(per_patient, len(multi[i])), replace=False)
                      for i in order[start : start + patients]]
            batches.append(np.concatenate([*chosen, singles[b * patients : (b + 1) * patients]]))
    return [batches[i] for i in rng.permutation(len(batches))]


def pair_loss(model: ReidNet, emb: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """BCE of every off-diagonal pair's same-patient logit, positive and negative pairs weighted equally."""
    logits = model.pair_logits(emb, emb)  # (B, B)
    same = (identity[:, None] == identity[None, :]).float()
    off = ~torch.eye(len(identity), dtype=torch.bool, device=emb.device)
    per_pair = F.binary_cross_entropy_with_logits(logits, same, reduction="none")
    pos, neg = (same.bool() & off), (~same.bool() & off)
    return torch.stack([per_pair[m].mean() for m in (pos, neg) if m.any()]).mean()  # a small stratum may lack one


def train_epoch(model: ReidNet, data: ReidRows, cfg: ReidTrainConfig, opt: torch.optim.Optimizer,
                rng: np.random.Generator, generator: torch.Generator, desc: str) -> float:
    """One epoch of P x K batches; returns the mean loss."""
    model.train()
    losses = []
    batches = pk_batches(data.identity, cfg.patients_per_batch, cfg.images_per_patient, rng,
                         data.strata if cfg.hard_negatives else None)
    for batch in tqdm(batches, desc=desc, disable=not cfg.progress):
        images = data.images[torch.from_numpy(batch)]
        if cfg.augment:
            images = augment(images, AUGMENT, ImageConfig(size=cfg.image_size), generator)
        identity = torch.from_numpy(data.identity[batch]).to(model.device)
        loss = pair_loss(model, model.embed(images.to(model.device)), identity)
        if not torch.isfinite(loss):
            raise DataError(f"re-identification loss is {loss.item()}: check the images, or lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def embed_all(model: ReidNet, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Unit embeddings (N, D) on the CPU, model in eval mode."""
    model.eval()
    return torch.cat([model.embed(images[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)])


def pair_auroc(emb: torch.Tensor, identity: np.ndarray, max_negatives: int, rng: np.random.Generator,
               strata: np.ndarray | None = None) -> dict:
    """AUROC of cosine similarity, same-patient vs different-patient pairs (all positives, sampled negatives).

    With ``strata``, only different-patient pairs of the same stratum (e.g. the same finding) are negatives.
    """
    i, j = np.triu_indices(len(identity), k=1)
    same = identity[i] == identity[j]
    neg = np.flatnonzero(~same if strata is None else ~same & (strata[i] == strata[j]))
    if len(neg) > max_negatives:
        neg = np.sort(rng.choice(neg, size=max_negatives, replace=False))
    keep = np.concatenate([np.flatnonzero(same), neg])
    if not same.any() or not len(neg):
        return {"auroc": None, "positive_pairs": int(same.sum()), "negative_pairs": len(neg),
                "note": "needs held-out patients with two images and at least two patients"}
    a, b = torch.from_numpy(i[keep]), torch.from_numpy(j[keep])
    cos = (emb[a] * emb[b]).sum(dim=1)  # (pairs,)
    target = torch.from_numpy(same[keep]).long()
    return {"auroc": float(binary_auroc(cos, target)), "positive_pairs": int(same.sum()), "negative_pairs": len(neg)}


def heldout_scores(model: ReidNet, data: ReidRows, cfg: ReidTrainConfig) -> dict:
    """Pair AUROC on held-out patients: overall, negatives of the same finding only, per source, raw pixels."""
    rng = np.random.default_rng(cfg.seed)
    emb = embed_all(model, data.images, cfg.eval_batch_size)
    out = {"reid": pair_auroc(emb, data.identity, cfg.max_test_pairs, rng), "by_source": {},
           "same_finding": pair_auroc(emb, data.identity, cfg.max_test_pairs, rng, data.strata)}
    pixels = F.normalize(data.images.flatten(1) - data.images.flatten(1).mean(dim=1, keepdim=True), dim=1)
    out["pixels"] = pair_auroc(pixels, data.identity, cfg.max_test_pairs, np.random.default_rng(cfg.seed))
    src = np.asarray(data.sources)
    for name in sorted(set(data.sources)):
        rows = np.flatnonzero(src == name)
        out["by_source"][name] = pair_auroc(emb[rows], data.identity[rows], cfg.max_test_pairs, rng)
    return out


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _split_rows(rows: pd.DataFrame, cfg: ReidTrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = rows["split"].astype(str)
    train, heldout = rows[split == cfg.train_split], rows[split.isin(list(cfg.heldout_splits))]
    if train.empty:
        raise DataError(f"no {cfg.train_split!r} rows in manifests {list(cfg.manifests)}: set train_split")
    if cfg.max_train_images is not None and len(train) > cfg.max_train_images:
        train = train.iloc[np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.max_train_images,
                                                                          replace=False))]
    return train, heldout


def train_reid(cfg: ReidTrainConfig, out_dir: str | Path | None = None) -> dict:
    """Train on the train split's patients, score held-out patients, save the model folder + metrics.json."""
    out_dir = Path(out_dir if out_dir is not None else cfg.out_dir)
    start = time.perf_counter()
    train_rows, heldout_rows = _split_rows(read_identities(cfg), cfg)
    train = load_rows(train_rows, cfg.image_size, cfg.progress, "train")
    heldout = load_rows(heldout_rows, cfg.image_size, cfg.progress, "held-out")
    model = init_densenet(ReidNet(image_size=cfg.image_size, width=cfg.width, embed_dim=cfg.embed_dim),
                          torch.Generator().manual_seed(cfg.seed)).to(_device(cfg.device))
    log.info("re-identification net: %d parameters, %d training images of %d patients", count_parameters(model),
             len(train), len(set(train.identity)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    rng, generator = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        loss = train_epoch(model, train, cfg, opt, rng, generator, f"reid epoch {epoch}/{cfg.epochs}")
        sched.step()
        entry = {"epoch": epoch, "loss": loss}
        if len(heldout):
            emb = embed_all(model, heldout.images, cfg.eval_batch_size)
            entry["heldout_auroc"] = pair_auroc(emb, heldout.identity, cfg.max_test_pairs, rng)["auroc"]
        history.append(entry)
        log.info("reid epoch %d: %s", epoch, entry)
    metrics = {"name": "cxrgen-reid", "parameters": count_parameters(model), "image_size": cfg.image_size,
               "train_images": len(train), "train_patients": len(set(train.identity)),
               "heldout_images": len(heldout), "heldout_patients": len(set(heldout.identity)),
               "heldout": heldout_scores(model, heldout, cfg) if len(heldout) else None,
               "history": history, "seconds": time.perf_counter() - start}
    model.save_pretrained(out_dir)
    save_config(cfg, out_dir / TRAIN_CONFIG_NAME)
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("held-out pair AUROC %s; saved to %s", (metrics["heldout"] or {}).get("reid"), out_dir)
    return metrics


def run_train_reid(config_path: str | Path | None, overrides: list[str] | None = None,
                   out_dir: str | Path | None = None) -> dict:
    """What ``cxrgen train-reid CONFIG [--set k=v] [--out DIR]`` calls: YAML in, metrics out."""
    return train_reid(load_config(ReidTrainConfig, config_path, overrides), out_dir)
