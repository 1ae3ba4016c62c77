"""Twin (frontal, lateral, report, truth) triplets as image tensors, for the joint denoiser.

The table comes from ``cxrgen.data.multiview.read_twin_triplets`` (re-exported here): study_id,
source, split, wording, frontal_path, lateral_path, report, then the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.multiview import read_twin_triplets
from cxrgen.errors import DataError


def load_views(table: pd.DataFrame, size: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Frontal and lateral images (N, 1, size, size) in [-1, 1] of the table's rows (resized, never flipped)."""
    if not len(table):
        raise DataError("no studies to load: the table is empty (check the split and data.twin_dirs)")
    cfg = ImageConfig(size=size)
    views = []
    for column in ("frontal_path", "lateral_path"):
        paths: Sequence[str] = list(table[column])
        views.append(torch.stack([load_image(p, cfg) for p in tqdm(paths, desc=f"loading {column[:-5]}s",
                                                                   disable=not progress)]))  # (N, 1, S, S)
    return views[0], views[1]


__all__ = ["load_views", "read_twin_triplets"]
