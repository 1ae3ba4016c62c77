"""Memorization: how close generated images come to their nearest training image.

A generated image counts as a copy when it is more similar to its nearest training image than
real held-out images are to theirs, at a chosen quantile (calibrate_threshold). Similarity is
measured on features (cosine, or negative euclidean distance: larger is always more similar);
pixel SSIM of the top pairs and a PNG grid of them let a person check by eye (RoentGen;
Somepalli et al. 2023, "Diffusion art or digital forgery?", for the copy-detection set-up).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png, to_unit_range
from cxrgen.errors import DataError
from cxrgen.evaluate.diversity import MSSSIMSettings

log = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
CHUNK_SIZE = 1024  # rows (and columns) of the similarity matrix held at once: 1024^2 floats = 4 MiB
SSIM = MSSSIMSettings()  # the same Gaussian window (Wang et al. 2004) as the diversity metric
GRID_PAD = 4  # pixels of background (white: image.high) around and between the tiles of the pairs grid


def _as_feature_tensor(x: Any, name: str) -> Tensor:
    feats = x.detach().float() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise DataError(f"{name} features have shape {tuple(feats.shape)}: give a non-empty 2-D array (N, D)")
    return feats


def _similarity(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Similarity of every row of ``a`` to every row of ``b`` (larger = more alike)."""
    if metric == "cosine":
        return a @ b.T  # rows already unit-normalised; (n, m)
    return -torch.cdist(a, b)  # (n, m)


def nearest_neighbours(
    gen_feats: Any, train_feats: Any, metric: str = "cosine", chunk_size: int = CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Index (N,) and similarity (N,) of each generated sample's nearest training sample.

    Works on blocks of ``chunk_size`` x ``chunk_size`` similarities, so memory stays small for
    10k x 10k and beyond. ``euclidean`` similarity is the negative distance.
    """
    if metric not in METRICS:
        raise DataError(f"metric={metric!r}: use one of {METRICS}")
    if chunk_size < 1:
        raise DataError(f"chunk_size={chunk_size}: give a positive number of rows")
    gen, train = _as_feature_tensor(gen_feats, "generated"), _as_feature_tensor(train_feats, "training")
    if gen.shape[1] != train.shape[1]:
        raise DataError(
            f"generated features have {gen.shape[1]} dimensions, training ones {train.shape[1]}: "
            "extract both with the same feature extractor"
        )
    if metric == "cosine":
        gen, train = torch.nn.functional.normalize(gen, dim=1), torch.nn.functional.normalize(train, dim=1)
    best_sim = torch.full((gen.shape[0],), -torch.inf)
    best_idx = torch.zeros(gen.shape[0], dtype=torch.long)
    for start in range(0, train.shape[0], chunk_size):
        block = train[start : start + chunk_size]  # (m, D)
        for row in range(0, gen.shape[0], chunk_size):
            sim, idx = _similarity(gen[row : row + chunk_size], block, metric).max(dim=1)  # (n,)
            better = sim > best_sim[row : row + chunk_size]  # earlier index wins ties
            best_sim[row : row + chunk_size] = torch.where(better, sim, best_sim[row : row + chunk_size])
            best_idx[row : row + chunk_size] = torch.where(better, idx + start, best_idx[row : row + chunk_size])
    return best_idx.cpu().numpy(), best_sim.cpu().numpy()


def calibrate_threshold(
    heldout_feats: Any, train_feats: Any, quantile: float = 0.99, metric: str = "cosine", chunk_size: int = CHUNK_SIZE
) -> float:
    """The ``quantile`` of real held-out images' similarity to their nearest training image.

    Held-out images are real but unseen in training: a generated image closer to the training set
    than this counts as a copy (copy_rate), so independent samples give a rate near 1 - quantile.
    """
    if not 0.0 < quantile < 1.0:
        raise DataError(f"quantile={quantile}: give a value strictly between 0 and 1, e.g. 0.99")
    _, sims = nearest_neighbours(heldout_feats, train_feats, metric=metric, chunk_size=chunk_size)
    if len(sims) < 1.0 / (1.0 - quantile):
        log.warning(
            "%d held-out samples cannot resolve the %g quantile: give at least %d",
            len(sims), quantile, int(np.ceil(1.0 / (1.0 - quantile))),
        )
    return float(np.quantile(sims, quantile))


def copy_rate(sims: Any, threshold: float) -> float:
    """Share of generated samples more similar to their nearest training sample than ``threshold``."""
    sims = np.asarray(sims, dtype=np.float64)
    if sims.size == 0:
        raise DataError("no similarities given: run nearest_neighbours on the generated features first")
    return float(np.mean(sims > threshold))


def top_pairs(idx: Any, sims: Any, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` most similar (generated index, training index, similarity) pairs, most similar first."""
    idx, sims = np.asarray(idx), np.asarray(sims, dtype=np.float64)
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), int(idx[i]), float(sims[i])) for i in order]


def pair_ssim(gen_images: Tensor, train_images: Tensor, image_cfg: ImageConfig = ImageConfig()) -> np.ndarray:
    """Pixel SSIM (Wang et al. 2004) of each (generated, nearest training) pair (N, 1, H, W) -> (N,)."""
    if gen_images.shape != train_images.shape or gen_images.ndim != 4:
        raise DataError(
            f"generated {tuple(gen_images.shape)} and training {tuple(train_images.shape)} images must both be "
            "(N, 1, H, W) of one size: resize the training images to the generated size first"
        )
    scores = structural_similarity_index_measure(
        to_unit_range(gen_images.float(), image_cfg).clamp(0.0, 1.0),
        to_unit_range(train_images.float(), image_cfg).clamp(0.0, 1.0),
        gaussian_kernel=True,
        sigma=SSIM.sigma,
        kernel_size=SSIM.kernel_size,
        reduction="none",
        data_range=SSIM.data_range,
    )  # (N,)
    return scores.detach().cpu().numpy()


def save_pairs_grid(
    pairs: Sequence[tuple[Tensor, Tensor]],
    path: str | Path,
    image_cfg: ImageConfig = ImageConfig(),
    text: dict[str, str] | None = None,
) -> Path:
    """Save a grey PNG with one row per (generated | nearest training) pair, for a person to inspect.

    Images are (1, H, W) in the ``image_cfg`` range; ``text`` becomes PNG tEXt chunks (e.g. similarities).
    """
    if len(pairs) == 0:
        raise DataError("no pairs given: pass (generated, training) image pairs, e.g. from top_pairs")
    shape = tuple(pairs[0][0].shape)
    if len(shape) != 3 or shape[0] != 1 or any(tuple(t.shape) != shape for pair in pairs for t in pair):
        raise DataError(f"grid images must all be (1, H, W) of one size, first is {shape}: resize them first")
    _, height, width = shape
    canvas = torch.full(
        (len(pairs) * (height + GRID_PAD) + GRID_PAD, 2 * width + 3 * GRID_PAD), image_cfg.high
    )  # (rows of tiles, 2 columns of tiles) with padding, white
    for row, (gen, train) in enumerate(pairs):
        top = GRID_PAD + row * (height + GRID_PAD)
        canvas[top : top + height, GRID_PAD : GRID_PAD + width] = gen[0].detach().cpu().float()
        canvas[top : top + height, 2 * GRID_PAD + width : 2 * GRID_PAD + 2 * width] = train[0].detach().cpu().float()
    path = save_png(canvas, path, image_cfg, text=text)
    log.info("saved %d memorization pairs to %s", len(pairs), path)
    return path
