"""FID / KID on precomputed features: zero on a set against itself, exact for a mean shift,
equal to an independent eigendecomposition formula and to torchmetrics, warnings and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from cxrgen.errors import DataError
from cxrgen.evaluate import fid as fid_module
from cxrgen.evaluate.fid import feature_stats, fid_from_features, frechet_distance, kid_from_features

DIM = 16
N = 400


class _Identity(nn.Module):
    """A torchmetrics 'feature extractor' over precomputed features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _features(seed: int, n: int = N, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim)  # (n, dim), correlated


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID via symmetric eigendecompositions: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_set_against_itself_is_zero() -> None:
    feats = _features(0)
    assert abs(fid_from_features(feats, feats)) < 1e-6


def test_pure_mean_shift_gives_squared_norm() -> None:
    feats = _features(1)
    shift = np.linspace(-1.0, 2.0, DIM)
    value = fid_from_features(feats, feats + shift)
    assert value > 0
    assert value == pytest.approx(float(shift @ shift), rel=1e-6)


def test_matches_independent_eigen_formula_and_torchmetrics() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _features(2), _features(3)
    ours = fid_from_features(real, fake)
    assert ours > 0
    assert ours == pytest.approx(_reference_fid(real, fake), rel=1e-6)
    metric = FrechetInceptionDistance(feature=_Identity(DIM))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)


def test_frechet_distance_accepts_tensors_and_stats() -> None:
    real, fake = _features(4), _features(5)
    mu1, s1 = feature_stats(torch.from_numpy(real).float())
    mu2, s2 = feature_stats(fake)
    assert mu1.dtype == np.float64 and s1.shape == (DIM, DIM)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_reference_fid(real.astype(np.float32), fake), rel=1e-5)


def test_singular_covariances_stay_real_and_finite() -> None:
    rng = np.random.default_rng(6)
    real = np.zeros((N, DIM))
    real[:, :4] = rng.normal(size=(N, 4))  # rank 4 of 16: the covariance product is singular
    value = fid_from_features(real, real + 0.5)
    assert isinstance(value, float)
    assert value == pytest.approx(0.25 * DIM, rel=1e-6)


def test_failed_sqrtm_is_retried_with_offset(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_sqrtm = fid_module.linalg.sqrtm
    calls: list[np.ndarray] = []

    def flaky_sqrtm(a: np.ndarray) -> np.ndarray:
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid_module.linalg, "sqrtm", flaky_sqrtm)
    feats = _features(14)
    mu, sigma = feature_stats(feats)
    with caplog.at_level(logging.WARNING, logger="cxrgen.evaluate.fid"):
        value = frechet_distance(mu, sigma, mu + 1.0, sigma)
    assert len(calls) == 2
    offset = np.eye(DIM) * fid_module.SQRTM_EPS
    np.testing.assert_allclose(calls[1], (sigma + offset) @ (sigma + offset))
    assert value == pytest.approx(DIM, rel=1e-4)
    assert any("adding" in r.getMessage() for r in caplog.records)


def test_large_imaginary_part_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: np.sqrt(np.abs(a)) * (1 + 0.5j))
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(DataError, match="imaginary"):
        frechet_distance(mu, sigma, mu, sigma)
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: a + 1e-9j)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_too_few_samples_warns(caplog: pytest.LogCaptureFixture) -> None:
    feats = _features(7, n=20, dim=DIM)
    with caplog.at_level(logging.WARNING, logger="cxrgen.evaluate.fid"):
        feature_stats(feats, name="generated")
    messages = [r.getMessage() for r in caplog.records]
    assert any("only 20 samples for 16 feature dimensions" in m and "full-rank covariance" in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrgen.evaluate.fid"):
        feature_stats(_features(8))
    assert not caplog.records


def test_bad_inputs_raise_data_error() -> None:
    with pytest.raises(DataError, match="same feature extractor"):
        fid_from_features(_features(9), _features(10, dim=DIM + 1))
    with pytest.raises(DataError, match="same feature extractor"):
        kid_from_features(_features(9), _features(10, dim=DIM + 1))
    with pytest.raises(DataError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(DataError, match="2-D"):
        fid_from_features(np.zeros(5), np.zeros(5))
    with pytest.raises(DataError, match="NaN"):
        fid_from_features(np.full((10, 2), np.nan), np.zeros((10, 2)))


def test_kid_identical_near_zero_shifted_positive() -> None:
    real, other = _features(11), _features(11)[::-1].copy()
    mean_same, std_same = kid_from_features(real, other, subsets=10, subset_size=100, rng=np.random.default_rng(0))
    mean_shift, _ = kid_from_features(real, real + 1.0, subsets=10, subset_size=100, rng=np.random.default_rng(0))
    assert abs(mean_same) < 3 * std_same + 1e-3
    assert mean_shift > 10 * max(abs(mean_same), std_same)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_full_subset_matches_torchmetrics_and_rng_repeats() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _features(12, n=120), _features(13, n=120) + 0.3
    ours, ours_std = kid_from_features(real, fake, subsets=2, subset_size=120, rng=np.random.default_rng(1))
    metric = KernelInceptionDistance(feature=_Identity(DIM), subsets=1, subset_size=120)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert ours == pytest.approx(float(metric.compute()[0]), rel=1e-6)
    assert ours_std == pytest.approx(0.0, abs=1e-9)  # every subset is the whole set
    first = kid_from_features(real, fake, subsets=5, subset_size=50, rng=np.random.default_rng(3))
    again = kid_from_features(real, fake, subsets=5, subset_size=50, rng=np.random.default_rng(3))
    assert first == again
