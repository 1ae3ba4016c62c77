"""Memorization: near copies of training samples are caught, independent samples give a copy rate
near 1 - quantile, chunking changes nothing, pixel SSIM of pairs, and the PNG grid of pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrgen.errors import DataError
from cxrgen.evaluate.memorization import (
    GRID_PAD,
    calibrate_threshold,
    copy_rate,
    nearest_neighbours,
    pair_ssim,
    save_pairs_grid,
    top_pairs,
)

DIM = 32
N_TRAIN = 300
N_EVAL = 400


def _feats(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, DIM)).astype(np.float32)  # (n, D)


def _brute_force(gen: np.ndarray, train: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        g = gen / np.linalg.norm(gen, axis=1, keepdims=True)
        t = train / np.linalg.norm(train, axis=1, keepdims=True)
        sim = g @ t.T  # (N, M)
    else:
        sim = -np.linalg.norm(gen[:, None, :] - train[None, :, :], axis=-1)  # (N, M)
    return sim.argmax(axis=1), sim.max(axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunking_matches_unchunked(metric: str) -> None:
    rng = np.random.default_rng(0)
    gen, train = _feats(rng, 97), _feats(rng, 131)  # sizes no chunk divides
    whole_idx, whole_sim = nearest_neighbours(gen, train, metric=metric, chunk_size=10_000)
    for chunk in (8, 50):
        idx, sim = nearest_neighbours(torch.from_numpy(gen), torch.from_numpy(train), metric=metric, chunk_size=chunk)
        np.testing.assert_array_equal(idx, whole_idx)
        np.testing.assert_allclose(sim, whole_sim, atol=1e-5)
    ref_idx, ref_sim = _brute_force(gen.astype(np.float64), train.astype(np.float64), metric)
    np.testing.assert_array_equal(whole_idx, ref_idx)
    np.testing.assert_allclose(whole_sim, ref_sim, atol=1e-4)


def test_near_copies_are_all_detected() -> None:
    rng = np.random.default_rng(1)
    train, heldout = _feats(rng, N_TRAIN), _feats(rng, N_EVAL)
    picks = rng.integers(0, N_TRAIN, size=100)
    copies = train[picks] + 1e-3 * _feats(rng, 100)  # generated = training samples + tiny noise
    threshold = calibrate_threshold(heldout, train, quantile=0.99)
    idx, sims = nearest_neighbours(copies, train)
    np.testing.assert_array_equal(idx, picks)
    assert copy_rate(sims, threshold) == 1.0


def test_independent_samples_copy_rate_near_one_minus_quantile() -> None:
    rng = np.random.default_rng(2)
    train, heldout, generated = _feats(rng, N_TRAIN), _feats(rng, N_EVAL), _feats(rng, N_EVAL)
    quantile = 0.9
    threshold = calibrate_threshold(heldout, train, quantile=quantile)
    _, sims = nearest_neighbours(generated, train)
    assert copy_rate(sims, threshold) == pytest.approx(1 - quantile, abs=0.05)
    _, heldout_sims = nearest_neighbours(heldout, train)
    assert copy_rate(heldout_sims, threshold) == pytest.approx(1 - quantile, abs=1.0 / N_EVAL)


def test_top_pairs_order() -> None:
    pairs = top_pairs(np.array([5, 6, 7]), np.array([0.2, 0.9, 0.5]), k=2)
    assert pairs == [(1, 6, pytest.approx(0.9)), (2, 7, pytest.approx(0.5))]


def test_pair_ssim_identical_high_noise_low() -> None:
    g = torch.Generator().manual_seed(3)
    train = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1  # (N, 1, H, W) in [-1, 1]
    near = (train + 0.01 * torch.randn(train.shape, generator=g)).clamp(-1, 1)
    other = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    ssim_near, ssim_other = pair_ssim(near, train), pair_ssim(other, train)
    assert ssim_near.shape == (3,)
    assert (ssim_near > 0.95).all() and (ssim_other < 0.2).all()
    assert pair_ssim(train, train) == pytest.approx(np.ones(3), abs=1e-5)
    with pytest.raises(DataError, match="one size"):
        pair_ssim(near, train[:, :, :16])


def test_save_pairs_grid_writes_expected_png(tmp_path) -> None:
    k, height, width = 3, 20, 24
    gen = torch.full((k, 1, height, width), -1.0)  # black
    train = torch.full((k, 1, height, width), 1.0)  # white
    path = save_pairs_grid(list(zip(gen, train, strict=True)), tmp_path / "grids" / "pairs.png", text={"sims": "0.9,0.8,0.7"})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L"
        assert image.size == (2 * width + 3 * GRID_PAD, k * height + (k + 1) * GRID_PAD)
        pixels = np.asarray(image)
        assert image.text["sims"] == "0.9,0.8,0.7"
    assert pixels[GRID_PAD + 1, GRID_PAD + 1] == 0  # first generated tile, black
    assert pixels[GRID_PAD + 1, 2 * GRID_PAD + width + 1] == 255  # its training neighbour, white
    with pytest.raises(DataError, match="one size"):
        save_pairs_grid([(gen[0], train[0, :, :10])], tmp_path / "bad.png")
    with pytest.raises(DataError, match="no pairs"):
        save_pairs_grid([], tmp_path / "empty.png")


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(DataError, match="same feature extractor"):
        nearest_neighbours(_feats(rng, 4), rng.normal(size=(4, DIM + 1)))
    with pytest.raises(DataError, match="metric"):
        nearest_neighbours(_feats(rng, 4), _feats(rng, 4), metric="manhattan")
    with pytest.raises(DataError, match="quantile"):
        calibrate_threshold(_feats(rng, 4), _feats(rng, 4), quantile=1.0)
