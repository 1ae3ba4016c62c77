"""Precision, recall, density and coverage of generated features against real ones (Naeem et al. 2020,
"Reliable fidelity and diversity metrics for generative models", eqs. 1-4; k = 5 as recommended).

Each real feature gets a ball reaching its k-th nearest real neighbour (the real manifold); precision
is the share of generated samples inside some real ball, density counts how many balls they fall in
(/ k, so ~1 for matching sets; robust to real outliers), coverage the share of real balls that hold
a generated sample. Recall swaps the roles (balls around generated samples). All in [0, 1] except
density (>= 0). Takes features (N, D), never a model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cxrgen.errors import DataError
from cxrgen.evaluate.image_pairs import NotEnoughImagesError

log = logging.getLogger(__name__)

DEFAULT_K = 5  # Naeem et al. 2020, sec. 4


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu().double()
    if x.ndim != 2 or not torch.isfinite(x).all():
        raise DataError(f"{name} features must be a finite 2-D array (N, D), got shape {tuple(x.shape)}")
    return x


def _kth_radius(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance (N,) of each row to its k-th nearest other row."""
    dist = torch.cdist(feats, feats)  # (N, N)
    return dist.kthvalue(k + 1, dim=1).values  # index 0 of the sorted row is the point itself (0)


def prdc(real: Any, generated: Any, k: int = DEFAULT_K) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) of generated (M, D) vs real (N, D) features.

    Raises NotEnoughImagesError when a set has k or fewer samples (a k-NN ball needs k others).
    """
    real_f, gen_f = _as_matrix(real, "real"), _as_matrix(generated, "generated")
    if real_f.shape[1] != gen_f.shape[1]:
        raise DataError(f"PRDC: real features are {real_f.shape[1]}-d, generated {gen_f.shape[1]}-d: "
                        "use one feature extractor for both")
    for name, feats in (("real", real_f), ("generated", gen_f)):
        if feats.shape[0] <= k:
            raise NotEnoughImagesError(f"PRDC with k={k} needs at least {k + 1} {name} images, got {feats.shape[0]}")
    real_r, gen_r = _kth_radius(real_f, k), _kth_radius(gen_f, k)  # (N,), (M,)
    cross = torch.cdist(real_f, gen_f)  # (N, M): real i to generated j
    inside = cross < real_r[:, None]  # generated j inside real ball i
    precision = inside.any(dim=0).double().mean()  # eq. 1
    recall = (cross < gen_r[None, :]).any(dim=1).double().mean()  # eq. 2: real i inside some generated ball
    density = inside.sum(dim=0).double().mean() / k  # eq. 3
    coverage = (cross.min(dim=1).values < real_r).double().mean()  # eq. 4: nearest generated inside real ball i
    return {"precision": float(precision), "recall": float(recall), "density": float(density),
            "coverage": float(coverage), "k": k, "n_real": int(real_f.shape[0]), "n_generated": int(gen_f.shape[0])}
