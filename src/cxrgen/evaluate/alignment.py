"""Prompt-image alignment: a CXR classifier's AUROC on generated images against the prompt's labels.

RoentGen (Chambon et al. 2022) scores each generated image with a pretrained classifier
and compares the scores with the labels extracted from its prompt. Labels follow the CheXpert
convention: 1 positive, 0 negative, -1 uncertain, NaN not mentioned; uncertain and missing labels
are left out per class. A class with only one label value left has no AUROC (None, with the reason
logged) and is excluded from the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from cxrgen.errors import DataError

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0  # CheXpert label values; NaN = not mentioned


def _as_matrix(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{name} has shape {x.shape}: give a 2-D array (N images, C classes)")
    return x


def _check_inputs(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> None:
    if probs.shape != labels.shape:
        raise DataError(f"probs {probs.shape} and labels {labels.shape} differ: give one score per image and class")
    if len(class_names) != probs.shape[1]:
        raise DataError(f"{len(class_names)} class names for {probs.shape[1]} columns: name every column once")
    if not np.isfinite(probs).all():
        raise DataError("probs contain NaN or inf: check the classifier's output")
    known = np.isnan(labels) | np.isin(labels, (POSITIVE, NEGATIVE, UNCERTAIN))
    if not known.all():
        bad = np.unique(labels[~known])[:5]
        raise DataError(f"labels hold values {bad.tolist()}: use 1 (positive), 0 (negative), -1 (uncertain) or NaN")


def _class_auroc(scores: np.ndarray, labels: np.ndarray, name: str) -> tuple[float | None, int, int]:
    """AUROC of one class on its certain labels, or None (reason logged) when only one value is left."""
    keep = np.isin(labels, (POSITIVE, NEGATIVE))  # drops NaN and uncertain
    target = labels[keep] == POSITIVE
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    if n_pos == 0 or n_neg == 0:
        log.warning(
            "class %r: %d positive and %d negative certain labels; AUROC needs both, so it is None and "
            "left out of the mean (generate images for prompts that mention the class both ways)",
            name, n_pos, n_neg,
        )
        return None, n_pos, n_neg
    value = binary_auroc(torch.from_numpy(scores[keep]), torch.from_numpy(target).long())
    return float(value), n_pos, n_neg


def per_class_auroc(probs: Any, labels: Any, class_names: Sequence[str]) -> dict:
    """Per-class AUROC of classifier scores (N, C) against prompt labels (N, C) in {1, 0, -1, NaN}.

    Returns ``{"per_class": {name: auroc | None}, "mean": float | None, "counts": {name:
    {"positive": n, "negative": n}}}``; the mean is over the classes that have an AUROC.
    """
    probs_m, labels_m = _as_matrix(probs, "probs"), _as_matrix(labels, "labels")
    _check_inputs(probs_m, labels_m, class_names)
    per_class: dict[str, float | None] = {}
    counts: dict[str, dict[str, int]] = {}
    for column, name in enumerate(class_names):
        value, n_pos, n_neg = _class_auroc(probs_m[:, column], labels_m[:, column], name)
        per_class[name] = value
        counts[name] = {"positive": n_pos, "negative": n_neg}
    valid = [v for v in per_class.values() if v is not None]
    if not valid:
        log.warning("no class has both positive and negative labels: the mean AUROC is None")
    mean = float(np.mean(valid)) if valid else None
    return {"per_class": per_class, "mean": mean, "counts": counts}
