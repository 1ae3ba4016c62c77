"""The sanity ladder: a metric earns trust only if it ranks known-good image sets above known-bad ones.

From real held-out images, five rungs of increasing damage (none needs a trained generator, so the
ladder runs anywhere):

0. ``heldout``: real held-out images, untouched (the best any model can do);
1. ``blur_noise``: slightly blurred (sigma = 0.5 px at 64 px) with mild Gaussian noise (std 0.05);
2. ``well_trained_proxy``: detail lost through a 4x down- and up-sampling bottleneck (as a lossy
   autoencoder would) plus noise (std 0.1): right anatomy, wrong texture;
3. ``barely_trained_proxy``: only the 16x coarser layout kept, with low-frequency blotches (amplitude
   0.4) and noise (std 0.1), like the blotchy samples of an undertrained model;
4. ``noise``: uniform noise in [-1, 1].

Every metric (lower = better, C2ST accuracy included) must rank them 0 < 1 < 2 < 3 < 4 against a
disjoint real reference set. The proxies stand in for model samples; they are not model samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

from cxrgen.errors import ConfigError
from cxrgen.evaluate.image_pairs import resize

log = logging.getLogger(__name__)

RUNGS = ("heldout", "blur_noise", "well_trained_proxy", "barely_trained_proxy", "noise")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), reflect-padded, kernel radius 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=images.dtype) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1))  # along W
    return F.conv2d(x, taps.view(1, 1, -1, 1))  # along H


def _noise(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    return std * torch.randn(shape, generator=generator)


def blur_noise(images: torch.Tensor, sigma_at_64: float, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """Real images (N, 1, S, S) blurred (sigma given in px at 64 px, scaled to S) plus Gaussian noise; clamped."""
    blurred = gaussian_blur(images, sigma_at_64 * images.shape[-1] / 64) if sigma_at_64 > 0 else images
    return (blurred + _noise(images.shape, noise_std, generator)).clamp(-1, 1)


def _bottleneck(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Down-sample by ``factor`` (area) and back (bilinear): what survives a lossy coarse code."""
    size = images.shape[-1]
    return resize(F.adaptive_avg_pool2d(images, max(1, size // factor)), size)


def degrade(images: torch.Tensor, rung: str, generator: torch.Generator) -> torch.Tensor:
    """Rung ``rung`` of the ladder made from real images (N, 1, S, S) in [-1, 1]; clamped to [-1, 1]."""
    size = images.shape[-1]
    if rung == "heldout":
        return images
    if rung == "blur_noise":
        return blur_noise(images, 0.5, 0.05, generator)
    if rung == "well_trained_proxy":
        out = _bottleneck(images, 4) + _noise(images.shape, 0.1, generator)
    elif rung == "barely_trained_proxy":
        blotches = resize(torch.randn(images.shape[0], 1, 8, 8, generator=generator), size)  # low-frequency field
        out = _bottleneck(images, 16) + 0.4 * blotches + _noise(images.shape, 0.1, generator)
    elif rung == "noise":
        out = torch.rand(images.shape, generator=generator) * 2 - 1
    else:
        raise ConfigError(f"unknown ladder rung {rung!r}; choose one of {list(RUNGS)}")
    return out.clamp(-1, 1)


def score_rungs(reference: torch.Tensor, rungs: dict[str, torch.Tensor],
                metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]]) -> dict[str, dict[str, float]]:
    """``metrics[name](reference, images)`` for every named image set, in order; {metric: {rung: value}}."""
    out: dict[str, dict[str, float]] = {name: {} for name in metrics}
    for rung, images in rungs.items():
        for name, metric in metrics.items():
            out[name][rung] = float(metric(reference, images))
            log.info("ladder %s %s: %.4f", name, rung, out[name][rung])
    return out


def run_ladder(reference: torch.Tensor, heldout: torch.Tensor,
               metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]],
               generator: torch.Generator) -> dict[str, dict[str, float]]:
    """``metrics[name](reference, rung_images)`` for every degraded-real rung; {metric: {rung: value}}."""
    return score_rungs(reference, {rung: degrade(heldout, rung, generator) for rung in RUNGS}, metrics)


def is_ordered(values: dict[str, float], tolerance: float = 0.0, rungs: Sequence[str] = RUNGS) -> bool:
    """True when the rungs rank strictly worse (higher) in ladder order, each step by more than ``tolerance``."""
    seq = [values[r] for r in rungs]
    return all(b - a > tolerance for a, b in pairwise(seq))


def is_ranked_to_ceiling(values: dict[str, float], rungs: Sequence[str], ceiling: float = 0.98) -> bool:
    """``is_ordered`` for a bounded metric such as C2ST accuracy: neighbours may tie only when both are
    at or above ``ceiling`` (both sets perfectly told from real: nothing left to rank them by)."""
    seq = [values[r] for r in rungs]
    return all(b > a or min(a, b) >= ceiling for a, b in pairwise(seq))
