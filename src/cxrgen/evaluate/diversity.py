"""Intra-prompt diversity: mean MS-SSIM over all pairs of the images generated for one prompt.

RoentGen (Chambon et al. 2022, fig. 3): K images per prompt, MS-SSIM (Wang et al.
2003, "Multi-scale structural similarity for image quality assessment") of every pair; lower means
more diverse. MS-SSIM downsamples by 2 between scales and the Gaussian window must fit inside the
coarsest scale, so an image side needs about ``(kernel_size - 1) * 2 ** (scales - 1) + 1`` pixels
(5 scales: > 160 px; torchmetrics asks >= 176). Smaller images use fewer scales: the first
``scales`` betas (finest first) renormalised to sum to 1; the result records how many were used.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from cxrgen.config import ImageConfig
from cxrgen.data.images import to_unit_range
from cxrgen.errors import DataError

log = logging.getLogger(__name__)

MIN_IMAGES_PER_PROMPT = 2  # a pair is the least that has a similarity
LENGTH_BUCKET_WIDTH = 10  # tokens per bucket in diversity_by_length (RoentGen fig. 3 bins by length)


@dataclass(frozen=True)
class MSSSIMSettings:
    """MS-SSIM parameters (Wang et al. 2003; torchmetrics defaults, RoentGen's choice)."""

    kernel_size: int = 11
    sigma: float = 1.5
    data_range: float = 1.0  # images are mapped from the pixel range to [0, 1] first
    betas: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # per-scale exponents
    normalize: str | None = "relu"  # torchmetrics: clamp negative per-scale terms (noise images)


def min_side_for_scales(scales: int, settings: MSSSIMSettings = MSSSIMSettings()) -> int:
    """Smallest image side that MS-SSIM with ``scales`` scales accepts (ours and torchmetrics' rule)."""
    window_fit = (settings.kernel_size - 1) * 2 ** (scales - 1) + 1  # window fits the coarsest scale
    divisor = max(1, scales - 1) ** 2  # torchmetrics requires side // divisor > kernel_size - 1
    torchmetrics_rule = settings.kernel_size * divisor
    return max(window_fit, torchmetrics_rule, 2**scales)


def scales_for_size(height: int, width: int, settings: MSSSIMSettings = MSSSIMSettings()) -> int:
    """Largest number of scales (at most len(betas)) whose windows fit an image of this size."""
    side = min(height, width)
    for scales in range(len(settings.betas), 0, -1):
        if side >= min_side_for_scales(scales, settings):
            return scales
    raise DataError(
        f"images of {height}x{width} px are smaller than one {settings.kernel_size}-px MS-SSIM window: "
        f"give images of at least {min_side_for_scales(1, settings)} px per side"
    )


def _truncated_betas(scales: int, settings: MSSSIMSettings) -> tuple[float, ...]:
    """The first ``scales`` betas, renormalised to sum to 1 (all of them unchanged when none is dropped)."""
    if scales == len(settings.betas):
        return settings.betas
    kept = settings.betas[:scales]
    total = sum(kept)
    return tuple(float(b / total) for b in kept)


def _prompt_score(images: Tensor, betas: tuple[float, ...], settings: MSSSIMSettings) -> float:
    """Mean MS-SSIM over all unordered pairs of one prompt's images (K, C, H, W)."""
    pairs = list(itertools.combinations(range(images.shape[0]), 2))
    first = torch.tensor([i for i, _ in pairs])
    second = torch.tensor([j for _, j in pairs])
    scores = multiscale_structural_similarity_index_measure(
        images[first],  # (P, C, H, W), P = K (K - 1) / 2
        images[second],
        gaussian_kernel=True,
        sigma=settings.sigma,
        kernel_size=settings.kernel_size,
        reduction="none",
        data_range=settings.data_range,
        betas=betas,
        normalize=settings.normalize,
    )  # (P,)
    return float(scores.mean())


def ms_ssim_diversity(
    images_by_prompt: Sequence[Tensor],
    settings: MSSSIMSettings = MSSSIMSettings(),
    image_cfg: ImageConfig = ImageConfig(),
) -> dict:
    """Per-prompt mean pairwise MS-SSIM of generated images (K, 1, H, W) in the ``image_cfg`` range.

    Lower = more diverse. Returns ``{"mean", "std", "per_prompt", "scales", "betas"}``: ``scales`` and ``betas`` are the
    ones used (fewer than 5 for images under ~176 px, see the module docstring).
    """
    if len(images_by_prompt) == 0:
        raise DataError("no prompts given: pass one (K, 1, H, W) tensor of generated images per prompt")
    for i, images in enumerate(images_by_prompt):
        if images.ndim != 4 or images.shape[0] < MIN_IMAGES_PER_PROMPT:
            raise DataError(
                f"prompt {i}: got images of shape {tuple(images.shape)}; give (K, 1, H, W) with "
                f"K >= {MIN_IMAGES_PER_PROMPT} images per prompt (RoentGen uses K = 4)"
            )
    shapes = {tuple(images.shape[1:]) for images in images_by_prompt}
    if len(shapes) != 1:
        raise DataError(f"images of all prompts must share one (C, H, W) shape, got {sorted(shapes)}")
    _, height, width = shapes.pop()
    scales = scales_for_size(height, width, settings)
    betas = _truncated_betas(scales, settings)
    if scales < len(settings.betas):
        log.info(
            "MS-SSIM on %dx%d images: using %d of %d scales, betas %s", height, width, scales, len(settings.betas), betas
        )
    per_prompt = [
        _prompt_score(to_unit_range(images.float(), image_cfg).clamp(0.0, 1.0), betas, settings)
        for images in images_by_prompt
    ]
    return {
        "mean": float(np.mean(per_prompt)),
        "std": float(np.std(per_prompt)),
        "per_prompt": per_prompt,
        "scales": scales,
        "betas": list(betas),
    }


def diversity_by_length(
    prompts: Sequence[str],
    per_prompt_scores: Sequence[float],
    tokens_fn: Callable[[str], int],
    bucket_width: int = LENGTH_BUCKET_WIDTH,
) -> list[tuple[str, float, int]]:
    """Mean diversity score per prompt-length bucket ("lo-hi" tokens), as in RoentGen fig. 3.

    ``tokens_fn`` counts a prompt's tokens (e.g. ``cxrgen.data.prompts.token_counter(cfg)``);
    only non-empty buckets are returned, shortest first.
    """
    if len(prompts) != len(per_prompt_scores):
        raise DataError(f"{len(prompts)} prompts but {len(per_prompt_scores)} scores: give one score per prompt")
    if bucket_width < 1:
        raise DataError(f"bucket_width={bucket_width}: give a positive number of tokens")
    buckets: dict[int, list[float]] = {}
    for prompt, score in zip(prompts, per_prompt_scores, strict=True):
        buckets.setdefault(int(tokens_fn(prompt)) // bucket_width, []).append(float(score))
    rows = []
    for index in sorted(buckets):
        low = index * bucket_width
        scores = buckets[index]
        rows.append((f"{low}-{low + bucket_width - 1}", float(np.mean(scores)), len(scores)))
    return rows
