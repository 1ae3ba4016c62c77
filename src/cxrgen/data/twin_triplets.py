"""Twin (frontal, lateral, report, truth) triplets as a table and as image tensors, for the joint denoiser.

The table has the columns of ``cxrgen.data.multiview.read_twin_triplets`` (study_id, source, split,
wording, frontal_path, lateral_path, report, then the truth), so either reader serves the joint stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.readers.twin import TRUTH_COLUMNS, TWIN_MANIFEST
from cxrgen.errors import DataError


def read_twin_triplets(twin_dir: str | Path) -> pd.DataFrame:
    """One row per twin study: both views' paths, the report, the split, the wording and the truth."""
    root = Path(twin_dir)
    if not (root / TWIN_MANIFEST).is_file():
        raise DataError(f"{root / TWIN_MANIFEST} does not exist; write a twin set with `cxrgen twin --out {root}`")
    table = pd.read_csv(root / TWIN_MANIFEST, keep_default_na=False)
    out = pd.DataFrame({"study_id": table["study_id"], "source": "twin", "split": table["split"],
                        "wording": table.get("wording", ""),
                        "frontal_path": [str(root / p) for p in table["pa_path"]],
                        "lateral_path": [str(root / p) for p in table["lateral_path"]],
                        "report": [f"FINDINGS: {f}\nIMPRESSION: {i}" for f, i in zip(table["findings"],
                                                                                   table["impression"], strict=True)]})
    for column in TRUTH_COLUMNS:
        if column in table.columns and column != "wording":
            out[column] = table[column]
    return out


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
