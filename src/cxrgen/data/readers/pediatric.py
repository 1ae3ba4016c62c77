"""The shared pediatric pneumonia set: labels only, so prompts state only what is known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.config import DataConfig
from cxrgen.data.manifest import CHEXPERT_LABELS, NEGATIVE, POSITIVE, ReadSummary
from cxrgen.data.readers.base import Collection, read_table, require_path

#: Source label -> (prompt sentence, CheXpert labels set). Nothing beyond the label is claimed.
LABELS: dict[str, tuple[str, dict[str, float]]] = {
    "normal": ("Normal.", {"No Finding": POSITIVE, "Pneumonia": NEGATIVE}),
    "bacterial pneumonia": ("Bacterial pneumonia.", {"Pneumonia": POSITIVE, "No Finding": NEGATIVE}),
    "viral pneumonia": ("Viral pneumonia.", {"Pneumonia": POSITIVE, "No Finding": NEGATIVE}),
}
AGE_GROUP = "Pediatric"  # children aged one to five (source README)


def pediatric_prompt(view: str, label: str) -> str:
    """E.g. 'Pediatric AP chest radiograph. Viral pneumonia.'"""
    return f"{AGE_GROUP} {view} chest radiograph. {LABELS[label][0]}"


def read_pediatric(root: str | Path, cfg: DataConfig, summary: ReadSummary) -> Collection:
    """Read ``pediatric-pneumonia-224``; the source's single 'train' split is not kept."""
    root = require_path(Path(root), "pediatric-pneumonia-224 folder", "Point at the folder with metadata.csv.")
    meta = read_table(require_path(root / "metadata.csv", "metadata.csv", "The folder must hold metadata.csv."),
                      ["image", "label", "patient_key", "view"], "pediatric metadata")
    rows = []
    for rec in meta.to_dict("records"):
        label = rec["label"].strip().lower()
        if label not in LABELS:
            summary.drop(f"unknown label {rec['label']!r}")
            continue
        view = rec["view"].strip().upper() or "AP"
        rows.append({
            "source": "pediatric",
            "image_path": str(root / rec["image"]),
            "study_id": Path(rec["image"]).stem,
            "patient_id": rec["patient_key"],
            "view": view,
            "prompt": pediatric_prompt(view, label),
            "finding": label,
            "license": rec.get("license", ""),
            **{name: LABELS[label][1].get(name, float("nan")) for name in CHEXPERT_LABELS},
        })
    summary.notes.append("source split column ignored (all rows are the source's 'train'); "
                         "patient-level split made from the seed")
    return Collection(rows=pd.DataFrame(rows), labelled=True, has_images=True, official_split=False)
