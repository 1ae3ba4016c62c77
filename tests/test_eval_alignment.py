"""Per-class AUROC on generated images: perfect / reversed / random scores, exclusion of uncertain
and missing labels, single-class columns, and agreement with the Mann-Whitney U statistic."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from cxrgen.errors import DataError
from cxrgen.evaluate.alignment import per_class_auroc

NAMES = ["Cardiomegaly", "Edema", "Pleural Effusion"]


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, size=(n, len(NAMES))).astype(float)  # (N, C) in {0, 1}


def test_perfect_reversed_and_random_scores() -> None:
    rng = np.random.default_rng(0)
    labels = _labels(rng, 200)
    scores = labels * 0.5 + rng.uniform(0, 0.4, size=labels.shape)  # every positive above every negative
    perfect = per_class_auroc(scores, labels, NAMES)
    assert perfect["per_class"] == pytest.approx({n: 1.0 for n in NAMES})
    assert perfect["mean"] == pytest.approx(1.0)
    reversed_ = per_class_auroc(1 - scores, labels, NAMES)
    assert reversed_["mean"] == pytest.approx(0.0)
    big = _labels(rng, 5000)
    random = per_class_auroc(rng.uniform(size=big.shape), big, NAMES)
    assert all(abs(v - 0.5) < 0.05 for v in random["per_class"].values())


def test_matches_mann_whitney_u() -> None:
    rng = np.random.default_rng(1)
    labels = _labels(rng, 300)
    scores = rng.normal(size=labels.shape) + 0.7 * labels  # informative but imperfect
    result = per_class_auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels), NAMES)
    for column, name in enumerate(NAMES):
        pos, neg = scores[labels[:, column] == 1, column], scores[labels[:, column] == 0, column]
        expected = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))  # AUROC = U / (n1 n0)
        assert result["per_class"][name] == pytest.approx(expected, abs=1e-5)


def test_uncertain_and_missing_labels_are_excluded() -> None:
    rng = np.random.default_rng(2)
    labels = _labels(rng, 100)
    scores = labels * 0.5 + rng.uniform(0, 0.4, size=labels.shape)
    noisy_labels = np.concatenate([labels, np.full((40, 3), -1.0), np.full((40, 3), np.nan)])
    noisy_scores = np.concatenate([scores, np.zeros((40, 3)), np.ones((40, 3))])  # would break a perfect AUROC
    result = per_class_auroc(noisy_scores, noisy_labels, NAMES)
    assert result["mean"] == pytest.approx(1.0)
    assert result["counts"]["Edema"]["positive"] + result["counts"]["Edema"]["negative"] == 100


def test_single_class_column_is_none_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    labels = _labels(rng, 100)
    labels[:, 1] = 1.0
    labels[:5, 1] = -1.0  # uncertain rows do not count as negatives
    scores = labels * 0.5 + rng.uniform(0, 0.4, size=labels.shape)
    scores[:, 2] = 1 - scores[:, 2]  # class 2 reversed: AUROC 0
    with caplog.at_level(logging.WARNING, logger="cxrgen.evaluate.alignment"):
        result = per_class_auroc(scores, labels, NAMES)
    assert result["per_class"]["Edema"] is None
    assert result["mean"] == pytest.approx(0.5)  # (1 + 0) / 2, Edema left out
    assert any("'Edema'" in r.getMessage() and "0 negative" in r.getMessage() for r in caplog.records)
    all_missing = per_class_auroc(scores, np.full_like(labels, np.nan), NAMES)
    assert all_missing["mean"] is None


def test_bad_inputs_raise() -> None:
    labels = np.zeros((4, 3))
    with pytest.raises(DataError, match="differ"):
        per_class_auroc(np.zeros((4, 2)), labels, NAMES)
    with pytest.raises(DataError, match="class names"):
        per_class_auroc(np.zeros((4, 3)), labels, NAMES[:2])
    with pytest.raises(DataError, match="-1 \\(uncertain\\)"):
        per_class_auroc(np.zeros((4, 3)), labels + 2, NAMES)
    with pytest.raises(DataError, match="NaN or inf"):
        per_class_auroc(np.full((4, 3), np.nan), labels, NAMES)
