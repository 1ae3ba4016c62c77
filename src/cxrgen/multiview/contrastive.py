"""Contrastive alignment maths: symmetric InfoNCE (CLIP), cross-modal retrieval recall@k, alignment score.

Rows of ``z_a`` and ``z_b`` are paired (row i of one modality belongs with row i of the other) and
L2-normalised. CLIP (Radford et al. 2021, Figure 3): ``logits = z_a @ z_b.T / tau`` (B, B), the
cross-entropy towards the diagonal over rows (a -> b) and over columns (b -> a, the transpose),
averaged. XGeM's contrastive loss forgot the transpose; ``info_nce`` is tested to be symmetric.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from cxrgen.errors import DataError


def _check_pairs(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise DataError(f"paired embeddings must both be (N, E); got {tuple(z_a.shape)} and {tuple(z_b.shape)}")


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired, normalised embeddings (B, E) each: mean of a->b and b->a cross-entropies."""
    _check_pairs(z_a, z_b)
    logits = z_a @ z_b.T / temperature  # (B, B): row i = a_i against every b
    target = torch.arange(z_a.shape[0], device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def retrieval_recall(z_query: torch.Tensor, z_gallery: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k: share of queries whose own pair (same row) is among the k most similar gallery rows."""
    _check_pairs(z_query, z_gallery)
    sim = z_query @ z_gallery.T  # (N, N)
    own = sim.diagonal().unsqueeze(1)  # (N, 1)
    rank = (sim > own).sum(dim=1)  # 0 = retrieved first; ties count in the query's favour
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks}


def alignment_score(z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    """Mean cosine similarity of paired embeddings (in [-1, 1]; mismatched pairs score lower)."""
    _check_pairs(z_a, z_b)
    return float(F.cosine_similarity(z_a, z_b, dim=-1).mean())


def pair_scores(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N,) of each pair: a per-sample image-report alignment score."""
    _check_pairs(z_a, z_b)
    return F.cosine_similarity(z_a, z_b, dim=-1)


def nearest(z_query: torch.Tensor, z_gallery: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices (N, k) of the k gallery rows (M, E) most similar to each query row (N, E), best first."""
    if z_query.dim() != 2 or z_gallery.dim() != 2 or z_query.shape[1] != z_gallery.shape[1]:
        raise DataError(f"embeddings must be (N, E) and (M, E); got {tuple(z_query.shape)}, {tuple(z_gallery.shape)}")
    if not 1 <= k <= z_gallery.shape[0]:
        raise DataError(f"k={k}: give 1..{z_gallery.shape[0]} (the gallery's size)")
    return (z_query @ z_gallery.T).topk(k, dim=1).indices
