"""Fréchet distance (FID) and kernel distance (KID) between two sets of precomputed features.

Features come from any extractor (Inception, a CXR classifier, a CLIP image tower); these
functions only see arrays ``(N, D)``. FID: Heusel et al. 2017, "GANs trained by a two time-scale
update rule converge to a local Nash equilibrium", eq. for d^2 of two Gaussians. KID: Binkowski et
al. 2018, "Demystifying MMD GANs", unbiased MMD^2 with the cubic polynomial kernel.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from scipy import linalg

from cxrgen.errors import DataError

log = logging.getLogger(__name__)

SQRTM_EPS = 1e-6  # diagonal offset added to both covariances when their product is singular
SQRTM_REL_ERROR = 1e-5  # ||X X - A||_F / ||A||_F above which sqrtm is retried with the offset
IMAG_REL_TOL = 1e-3  # largest |imaginary part| of sqrtm, relative to its real scale, that is noise
SAMPLES_PER_DIM = 2  # warn when a set has fewer than this many samples per feature dimension
KID_DEGREE = 3  # k(x, y) = (x.y / d + KID_COEF) ** KID_DEGREE  (Binkowski et al. 2018)
KID_COEF = 1.0


def _as_float64(x: Any, name: str) -> np.ndarray:
    """A numpy float64 copy of an array or tensor (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_features(x: Any, name: str) -> np.ndarray:
    """Features as a finite float64 matrix (N, D)."""
    feats = _as_float64(x, name)
    if feats.ndim != 2:
        raise DataError(f"{name} features have shape {feats.shape}: give a 2-D array (N samples, D features)")
    if not np.isfinite(feats).all():
        raise DataError(f"{name} features contain NaN or inf: check the feature extractor's input and output")
    return feats


def feature_stats(
    features: Any, name: str = "features", samples_per_dim: float = SAMPLES_PER_DIM
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64; warns when N is too small for a stable FID."""
    feats = _as_features(features, name)
    n, d = feats.shape
    if n < 2:
        raise DataError(f"{name}: {n} sample(s) given; a covariance needs at least 2 (FID needs thousands)")
    if n < samples_per_dim * d:
        log.warning(
            "%s: only %d samples for %d feature dimensions; FID needs far more samples than the feature "
            "dimension for a full-rank covariance (at least %g x %d here, thousands in practice), so this "
            "value is biased and unstable",
            name, n, d, samples_per_dim, d,
        )
    mu = feats.mean(axis=0)  # (D,)
    sigma = np.cov(feats, rowvar=False)  # (D, D), divides by N - 1
    return mu, np.atleast_2d(sigma)


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """sqrt(sigma1 @ sigma2), retried with an eps offset on the diagonals when the product is singular."""
    product = sigma1 @ sigma2
    with warnings.catch_warnings():  # singularity is measured and handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(product)
    scale = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    error = np.linalg.norm(covmean @ covmean - product) / scale
    if not np.isfinite(covmean).all() or error > SQRTM_REL_ERROR:
        log.warning(
            "sqrtm of the covariance product is inaccurate (relative error %.2g, singular product); "
            "adding %g to the diagonals: use more samples than feature dimensions to avoid this",
            error, SQRTM_EPS,
        )
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        real_scale = max(np.abs(covmean.real).max(), 1.0)
        if imag > IMAG_REL_TOL * real_scale:
            raise DataError(
                f"sqrtm of the covariance product has a large imaginary part ({imag:.3g}): the covariances "
                "are ill-conditioned; use many more samples than feature dimensions, or fewer dimensions"
            )
        covmean = covmean.real
    return covmean


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Heusel et al. 2017, FID)."""
    mu1, mu2 = np.atleast_1d(_as_float64(mu1, "mu1")), np.atleast_1d(_as_float64(mu2, "mu2"))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1, "sigma1")), np.atleast_2d(_as_float64(sigma2, "sigma2"))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DataError(
            f"FID inputs do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}; both sets must come from the same feature extractor (same D)"
        )
    diff = mu1 - mu2  # (D,)
    covmean = _sqrtm_product(sigma1, sigma2)  # (D, D)
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)


def _check_same_dim(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1] != fake.shape[1]:
        raise DataError(
            f"real features have {real.shape[1]} dimensions but generated ones have {fake.shape[1]}: "
            "extract both sets with the same feature extractor"
        )


def fid_from_features(real: Any, fake: Any) -> float:
    """FID between real (N, D) and generated (M, D) features."""
    real_f, fake_f = _as_features(real, "real"), _as_features(fake, "generated")
    _check_same_dim(real_f, fake_f)
    mu_r, sigma_r = feature_stats(real_f, name="real")
    mu_f, sigma_f = feature_stats(fake_f, name="generated")
    return frechet_distance(mu_r, sigma_r, mu_f, sigma_f)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3  (Binkowski et al. 2018, KID kernel)."""
    return (x @ y.T / x.shape[1] + KID_COEF) ** KID_DEGREE  # (n, m)


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples (Gretton et al. 2012, eq. 3; diagonals left out)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)  # (m, m) each
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    real: Any,
    fake: Any,
    subsets: int = 100,
    subset_size: int = 1000,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """KID: mean and (population) std of unbiased MMD^2 over random equal-size subsets of both sets.

    ``rng`` draws the subsets; ``None`` uses a fresh ``np.random.default_rng(0)`` so that results
    repeat. ``subset_size`` is clipped to the smaller set (with a warning).
    """
    real_f, fake_f = _as_features(real, "real"), _as_features(fake, "generated")
    _check_same_dim(real_f, fake_f)
    if subsets < 1:
        raise DataError(f"kid subsets={subsets}: give at least 1")
    n_min = min(real_f.shape[0], fake_f.shape[0])
    if n_min < 2:
        raise DataError(f"KID needs at least 2 samples in each set, got {real_f.shape[0]} and {fake_f.shape[0]}")
    if subset_size > n_min:
        log.warning("kid subset_size=%d exceeds the smaller set (%d samples); using %d", subset_size, n_min, n_min)
        subset_size = n_min
    if subset_size < 2:
        raise DataError(f"kid subset_size={subset_size}: give at least 2")
    rng = rng if rng is not None else np.random.default_rng(0)
    scores = np.empty(subsets)
    for i in range(subsets):
        x = real_f[rng.choice(real_f.shape[0], subset_size, replace=False)]  # (m, D)
        y = fake_f[rng.choice(fake_f.shape[0], subset_size, replace=False)]  # (m, D)
        scores[i] = _unbiased_mmd2(x, y)
    return float(scores.mean()), float(scores.std())
