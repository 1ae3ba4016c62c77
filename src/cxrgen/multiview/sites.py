"""Nodule sites: the twin's truth of where each nodule lands in the frontal view, as targets on a coarse grid.

The CT twin records each nodule's projected centre and radius per view (``SITE_COLUMNS``). Stage ``aligned`` with
``site_weight`` > 0 teaches the frontal tower's last feature map (g x g cells, g = S / 16: the grid the CoDi view
prompts read) which cells hold a nodule, through a 1 x 1 convolution used in training only: dense supervision
where the report's side label alone taught a 64 px tower nothing (docs/multiview.md, session 30).

* ``site_targets(table, image_size, grid) -> (targets (N, g, g), known (N,))``: a cell is 1 where the nodule's
  disc overlaps it; ``known`` is False for studies without site truth (the adult set, twin sets written before
  the sites were recorded), which the loss skips.
* ``site_scores(cell_logits, targets, known)``: presence AUROC (the strongest cell per image) and the side of
  present nodules read as the image half of the strongest cell (the patient's right on the image's left).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from cxrgen.data.readers.twin import SITE_COLUMNS
from cxrgen.errors import DataError

#: The frontal view's site columns: column, row, radius (pixels of the twin's written images).
FRONTAL_SITE = SITE_COLUMNS[:3]


def _known(value: object) -> bool:
    return value is not None and str(value).strip() != "" and not (isinstance(value, float) and math.isnan(value))


def site_targets(table: pd.DataFrame, image_size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per study a (grid, grid) map, 1 where its frontal nodule overlaps the cell, and whether the truth is known.

    ``table``: triplets (``cxrgen.data.multiview.read_twin_triplets`` carries the site columns and ``twin_size``, the
    side of the twin's images). Twin studies with empty site columns and ``nodule_lobe`` "none" are known negatives.
    """
    if image_size % grid:
        raise DataError(f"image_size={image_size} is not a multiple of the site grid {grid}")
    n = len(table)
    targets = torch.zeros(n, grid, grid)
    known = torch.zeros(n, dtype=torch.bool)
    if "twin_size" not in table.columns:
        return targets, known
    cell = image_size / grid
    centres = (np.arange(grid) + 0.5) * cell - 0.5  # pixel coordinates of the cell centres
    for i, rec in enumerate(table.to_dict("records")):
        if rec.get("source") != "twin" or not _known(rec.get("twin_size")):
            continue
        values = [rec.get(c) for c in FRONTAL_SITE]
        if not all(_known(v) for v in values):
            known[i] = str(rec.get("nodule_lobe", "")) == "none"  # no nodule: all cells negative
            continue
        scale = image_size / float(rec["twin_size"])
        col, row = (float(values[0]) + 0.5) * scale - 0.5, (float(values[1]) + 0.5) * scale - 0.5
        radius = max(float(values[2]) * scale, 0.5)
        # distance from the centre to each cell's square (0 inside it), per axis
        dx = np.clip(np.abs(centres - col) - cell / 2, 0, None)
        dy = np.clip(np.abs(centres - row) - cell / 2, 0, None)
        targets[i] = torch.from_numpy((dy[:, None] ** 2 + dx[None, :] ** 2 <= radius ** 2).astype(np.float32))
        known[i] = True
    return targets, known


class SiteHead(nn.Module):
    """A 1 x 1 convolution from a tower's last feature map (B, C, g, g) to per-cell nodule logits (B, g, g)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.conv(fmap)[:, 0]


def site_pos_weight(targets: torch.Tensor, known: torch.Tensor) -> float:
    """sqrt(negative / positive cells) of the known studies (1 if none is positive): rare cells weigh more."""
    cells = targets[known]
    pos = float(cells.sum())
    return math.sqrt((cells.numel() - pos) / pos) if pos > 0 else 1.0


def site_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Mean per-cell BCE (positives x ``pos_weight``) over the known studies of a batch; 0 if none is known."""
    if not bool(known.any()):
        return logits.sum() * 0.0
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits[known], targets[known].to(logits), pos_weight=weight)


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()[: len(pos)]
    return float((ranks.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


#: Nodule diameter bands (mm) the site scores are also given for.
SIZE_BANDS: tuple[tuple[float, float], ...] = ((0.0, 15.0), (15.0, 25.0), (25.0, 1000.0))


def site_scores(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, lobes: list[str],
                diameters_mm: list[float] | None = None) -> dict:
    """Presence AUROC of the strongest cell per image, and the side accuracy of present nodules read as the image
    half of the strongest cell (the patient's right on the image's left) against ``lobes`` (the truth's
    ``nodule_lobe`` per study, e.g. "right_upper"); with ``diameters_mm`` both per ``SIZE_BANDS`` band too."""
    keep = known.nonzero().flatten().tolist()
    logits, targets = logits[keep].detach().float(), targets[keep]
    present = targets.flatten(1).amax(1) > 0
    half = logits.shape[-1] // 2
    read_right = logits[..., :half].flatten(1).amax(1) > logits[..., half:].flatten(1).amax(1)
    truth_right = torch.tensor([lobes[i].startswith("right") for i in keep], dtype=torch.bool)
    out: dict = {"n": len(keep), "n_nodule": int(present.sum()),
                 "presence_auroc": _auroc(logits.flatten(1).amax(1).numpy(), present.numpy())}
    out["side_accuracy"] = float((read_right == truth_right)[present].float().mean()) if present.any() else None
    if diameters_mm is not None:
        mm = torch.tensor([float(diameters_mm[i] or 0.0) for i in keep])
        strongest = logits.flatten(1).amax(1)
        for lo, hi in SIZE_BANDS:
            band = present & (mm >= lo) & (mm < hi)
            label = f"{lo:g}-{hi:g} mm" if hi < 1000 else f">= {lo:g} mm"
            out[label] = {"n": int(band.sum()),
                          "presence_auroc": _auroc(strongest[band | ~present].numpy(), band[band | ~present].numpy()),
                          "side_accuracy": float((read_right == truth_right)[band].float().mean()) if band.any()
                          else None}
    return out
