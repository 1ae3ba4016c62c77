"""Two image sets made comparable for a two-sample metric (C2ST, SWD): one channel, one size, counts checked.

Metrics that compare pixels need both sets in the same form; when they are not, the sets are
converted here and each conversion is returned as a note (and logged), never done silently.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from cxrgen.errors import DataError

log = logging.getLogger(__name__)


class NotEnoughImagesError(DataError):
    """A metric was given fewer images than it needs; the message says how many."""


def as_gray(images: torch.Tensor, name: str, notes: list[str]) -> torch.Tensor:
    """Images (N, 1, H, W) float: (N, H, W) gets a channel axis, RGB is averaged to gray (noted)."""
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"{name} images have shape {tuple(images.shape)}: give (N, 1, H, W) in [-1, 1]")
    if images.shape[1] == 3:
        notes.append(f"{name} images had 3 channels: averaged to 1 (grayscale)")
        images = images.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return images.float()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, size, size): bilinear, antialiased; unchanged when already that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def comparable(real: torch.Tensor, generated: torch.Tensor, min_per_set: int, metric: str,
               size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Both sets gray (N, 1, S, S) at ``size`` (None: the smaller side of the two); notes on conversions.

    Raises NotEnoughImagesError when a set has fewer than ``min_per_set`` images.
    """
    notes: list[str] = []
    real, generated = as_gray(real, "real", notes), as_gray(generated, "generated", notes)
    for name, images in (("real", real), ("generated", generated)):
        if images.shape[0] < min_per_set:
            raise NotEnoughImagesError(f"{metric} needs at least {min_per_set} {name} images, got {images.shape[0]}: "
                                       f"give more images (more prompts or --n-per-prompt, more held-out rows)")
    sides = {int(min(x.shape[-2:])) for x in (real, generated)}
    if any(x.shape[-2] != x.shape[-1] for x in (real, generated)):
        notes.append("non-square images are resized (not cropped) to a square")
    target = size if size is not None else min(sides)
    if size is None and len(sides) > 1:
        notes.append(f"real and generated images differ in size ({sorted(sides)} px): both resized to {target} px")
    for note in notes:
        log.info("%s: %s", metric, note)
    return resize(real, target), resize(generated, target), notes


def balanced(real: torch.Tensor, generated: torch.Tensor, generator: torch.Generator,
             notes: list[str], metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equal counts (a seeded random subset of the larger set, so chance is exactly 0.5); the kept generated rows."""
    n = min(real.shape[0], generated.shape[0])
    keep = torch.arange(generated.shape[0])
    if real.shape[0] == generated.shape[0]:
        return real, generated, keep
    note = f"{real.shape[0]} real vs {generated.shape[0]} generated images: a random {n} of the larger set is used"
    notes.append(note)
    log.info("%s: %s", metric, note)
    if real.shape[0] > n:
        real = real[torch.randperm(real.shape[0], generator=generator)[:n].sort().values]
    else:
        keep = torch.randperm(generated.shape[0], generator=generator)[:n].sort().values
        generated = generated[keep]
    return real, generated, keep
