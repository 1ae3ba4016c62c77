"""AUROC of each arm on the real test images: per class (one-vs-rest), macro mean, seed spread, bootstrap CIs.

The point estimate of an arm is the mean over seeds of its test AUROC. Its confidence interval comes
from a percentile bootstrap over test images (Efron & Tibshirani 1993, ch. 13): the test images are
resampled with replacement, every seed's AUROC is recomputed on the resample, and the seed mean is
taken. All arms share the resamples, so differences between arms (against real only) are paired.
AUROC is the Mann-Whitney statistic (average ranks for ties), vectorised over seeds and resamples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from cxrgen.errors import DataError

log = logging.getLogger(__name__)


def rank_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC over the last axis: scores (..., n), positive (..., n) booleans (broadcast); NaN without both classes."""
    scores, positive = np.broadcast_arrays(scores, positive)
    ranks = rankdata(scores, axis=-1)  # average ranks of ties
    n_pos = positive.sum(axis=-1).astype(np.float64)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2  # Mann-Whitney U of the positives
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def class_aurocs(probs: np.ndarray, targets: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Per-class AUROC of probs (S seeds, n, C) against targets (n, C): (S, C), or (S, B, C) for index (B, n)."""
    if probs.ndim != 3 or probs.shape[1:] != targets.shape:
        raise DataError(f"probs {probs.shape} and targets {targets.shape}: give (seeds, n, C) and (n, C)")
    positive = targets.astype(bool)
    if index is None:
        return np.stack([rank_auroc(probs[:, :, c], positive[:, c]) for c in range(targets.shape[1])], axis=-1)
    return np.stack([rank_auroc(probs[:, index, c], positive[index, c]) for c in range(targets.shape[1])],
                    axis=-1)  # (S, B, n) per class -> (S, B, C)


def bootstrap_index(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Test-image indices (B, n) drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def interval(values: np.ndarray, confidence: float) -> list[float]:
    """Percentile interval of the finite values (NaN resamples, a class missing from them, left out)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def _estimate(seeds: np.ndarray, boot: np.ndarray, confidence: float) -> dict:
    """One number's summary: mean over seeds, bootstrap CI of that mean, the seeds' values and spread."""
    return {"auroc": float(np.mean(seeds)), "ci": interval(boot.mean(axis=0), confidence),
            "seeds": [float(v) for v in seeds], "seed_std": float(np.std(seeds, ddof=1)) if seeds.size > 1 else 0.0}


def summarise(probs: Mapping[str, np.ndarray], targets: np.ndarray, classes: Sequence[str], resamples: int,
              confidence: float, rng: np.random.Generator, reference: str | None = None) -> dict:
    """Per arm: macro and per-class AUROC with bootstrap CIs and seed spread; paired deltas vs ``reference``."""
    index = bootstrap_index(targets.shape[0], resamples, rng)
    full = {arm: class_aurocs(p, targets) for arm, p in probs.items()}  # (S, C)
    boot = {arm: class_aurocs(p, targets, index) for arm, p in probs.items()}  # (S, B, C)
    degenerate = int(np.isnan(next(iter(boot.values()))).any(axis=(0, 2)).sum())
    if degenerate:
        log.warning("%d of %d bootstrap resamples lack a class's positives or negatives; left out of the CIs "
                    "(a larger test split avoids this)", degenerate, resamples)
    out: dict = {"arms": {}, "resamples": resamples, "confidence": confidence, "degenerate_resamples": degenerate}
    for arm in probs:
        macro_full, macro_boot = full[arm].mean(axis=-1), boot[arm].mean(axis=-1)  # (S,), (S, B)
        entry = {"macro": _estimate(macro_full, macro_boot, confidence),
                 "per_class": {c: _estimate(full[arm][:, i], boot[arm][:, :, i], confidence)
                               for i, c in enumerate(classes)}}
        if reference is not None and reference in probs and arm != reference:
            diff = macro_boot.mean(axis=0) - boot[reference].mean(axis=-1).mean(axis=0)  # (B,) paired
            entry["delta_vs_" + reference] = {
                "auroc": float(macro_full.mean() - full[reference].mean(axis=-1).mean()),
                "ci": interval(diff, confidence),
                "p_not_better": float(np.mean(diff[np.isfinite(diff)] <= 0)),  # one-sided bootstrap p
            }
        out["arms"][arm] = entry
    return out
