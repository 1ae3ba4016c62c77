"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive growing of
GANs", sec. 5 and appendix D): a realism measure that needs no trained network.

Each image is split into a Laplacian pyramid (Burt & Adelson 1983) from full size down to 16 px;
at every level, 7 x 7 neighbourhoods at random places are the descriptors. Descriptors of each set
are normalised per level by that set's own mean and std (as Karras et al.), then the two sets'
descriptor distributions are compared by the sliced Wasserstein distance: project on random unit
directions, sort, mean absolute difference (Rabin et al. 2011). Values are x 1e3 as in the paper;
fine levels see texture and noise, coarse levels anatomy and layout. Lower is better; 0 = identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import ConfigError
from cxrgen.evaluate.image_pairs import comparable

log = logging.getLogger(__name__)

#: Binomial 5-tap filter [1, 4, 6, 4, 1] / 16 (Burt & Adelson's Gaussian pyramid kernel), separable.
_TAPS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
SCALE = 1e3  # Karras et al. report SWD x 1e3


@dataclass(frozen=True)
class SWDSettings:
    """Karras et al.'s defaults: 7 x 7 patches, 128 per image and level, 4 x 128 random directions, 16 px floor."""

    patch: int = 7
    patches_per_image: int = 128
    directions: int = 128
    repeats: int = 4
    min_resolution: int = 16
    min_images: int = 8
    max_descriptors: int = 16384  # per set and level (a random subset): bounds the sorting cost on CPU

    def __post_init__(self) -> None:
        if min(self.patch, self.patches_per_image, self.directions, self.repeats, self.min_images,
               self.max_descriptors) < 1:
            raise ConfigError(f"SWD settings {self}: every count must be >= 1")
        if self.min_resolution < self.patch:
            raise ConfigError(f"SWD min_resolution={self.min_resolution} is smaller than the patch ({self.patch})")


def _blur(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """The 5 x 5 binomial filter on (N, 1, H, W), reflect-padded."""
    kernel = (_TAPS[:, None] * _TAPS[None, :]).to(x)[None, None]  # (1, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, stride=stride)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x, stride=2)  # (N, 1, ceil(H/2), ceil(W/2))


def _pyr_up(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-insertion upsampling, then the filter x 4 (keeps the mean), cropped to (height, width)."""
    up = torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = 4.0 * x
    return _blur(up)[..., :height, :width]


def laplacian_pyramid(images: torch.Tensor, min_resolution: int = 16) -> list[torch.Tensor]:
    """Band-pass levels from full size down, the last one the Gaussian level at >= ``min_resolution`` px."""
    levels, x = [], images
    while min(x.shape[-2:]) // 2 >= min_resolution:
        small = _pyr_down(x)
        levels.append(x - _pyr_up(small, x.shape[-2], x.shape[-1]))  # detail lost by halving
        x = small
    levels.append(x)
    return levels


def _descriptors(level: torch.Tensor, s: SWDSettings, generator: torch.Generator) -> torch.Tensor:
    """Random patch x patch neighbourhoods (N * P, patch * patch), normalised by the set's own mean and std."""
    n, _, h, w = level.shape
    ys = torch.randint(0, h - s.patch + 1, (n, s.patches_per_image, 1, 1), generator=generator)
    xs = torch.randint(0, w - s.patch + 1, (n, s.patches_per_image, 1, 1), generator=generator)
    offset = torch.arange(s.patch)
    rows, cols = ys + offset.view(1, 1, -1, 1), xs + offset.view(1, 1, 1, -1)  # (N, P, patch, patch) each
    batch = torch.arange(n).view(n, 1, 1, 1)
    desc = level[:, 0][batch, rows, cols].reshape(n * s.patches_per_image, -1).double()  # (N * P, patch^2)
    return (desc - desc.mean()) / desc.std().clamp_min(1e-12)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, repeats: int,
                       generator: torch.Generator) -> float:
    """Mean over ``repeats`` x ``directions`` random unit projections of the 1-D W1 of equal-size sets (N, D)."""
    if a.shape != b.shape:
        raise ConfigError(f"sliced_wasserstein needs equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    values = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=generator, dtype=a.dtype)  # (D, K)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        # (K, N) each, sorted along N with numpy (torch.sort on CPU is ~5x slower here)
        pa = np.sort((a @ dirs).T.float().cpu().numpy(), axis=1)
        pb = np.sort((b @ dirs).T.float().cpu().numpy(), axis=1)
        values.append(float(np.abs(pa - pb).mean()))
    return float(np.mean(values))


def swd(real: torch.Tensor, generated: torch.Tensor, settings: SWDSettings = SWDSettings(),
        generator: torch.Generator | None = None) -> dict:
    """SWD x 1e3 per pyramid level (keyed by resolution) and their mean, real vs generated (N, 1, H, W).

    Sets of different sizes use an equal number of descriptors (a random subset of the larger one, at most
    ``settings.max_descriptors``).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    real, gen, notes = comparable(real, generated, settings.min_images, "SWD")
    per_level: dict[str, float] = {}
    for lr, lg in zip(laplacian_pyramid(real, settings.min_resolution),
                      laplacian_pyramid(gen, settings.min_resolution), strict=True):
        da, db = _descriptors(lr, settings, generator), _descriptors(lg, settings, generator)
        n = min(da.shape[0], db.shape[0], settings.max_descriptors)
        da = da[torch.randperm(da.shape[0], generator=generator)[:n]]
        db = db[torch.randperm(db.shape[0], generator=generator)[:n]]
        per_level[str(lr.shape[-1])] = SCALE * sliced_wasserstein(da, db, settings.directions, settings.repeats,
                                                                  generator)
    mean = sum(per_level.values()) / len(per_level)
    log.info("SWD (x1e3): mean %.2f, per level %s", mean, {k: round(v, 2) for k, v in per_level.items()})
    return {"mean": mean, "per_level": per_level, "n_real": int(real.shape[0]), "n_generated": int(gen.shape[0]),
            "image_size": int(real.shape[-1]), "scale": SCALE, "notes": notes}
