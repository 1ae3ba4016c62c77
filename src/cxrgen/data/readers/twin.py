"""A CT-twin set written by ``cxrgen twin``: one row per study in ``twin.csv``, two images per study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.config import DataConfig
from cxrgen.data.manifest import NEGATIVE, POSITIVE, ReadSummary
from cxrgen.data.readers.base import Collection, read_table, require_path

TWIN_MANIFEST = "twin.csv"
VIEW_COLUMNS = {"PA": "pa_path", "LATERAL": "lateral_path"}
REQUIRED = ["study_id", "patient_id", "split", "findings", "impression", "pa_path", "lateral_path",
            "effusion_side", "pneumothorax_side", "consolidation_lobe", "cardiomegaly", "nodule_lobe"]
#: Truth columns carried into the manifest as they are.
TRUTH_COLUMNS = ("effusion_side", "effusion_size", "pneumothorax_side", "pneumothorax_size", "consolidation_lobe",
                 "cardiomegaly", "heart_scale", "ctr", "nodule_lobe", "nodule_mm", "wording")
#: Where the nodule lands in each view (``cxrgen twin`` >= session 30; empty without a nodule): column, row
#: (fractional pixels of the written images) and radius (pixels).
SITE_COLUMNS = tuple(f"nodule_{view}_{part}" for view in ("pa", "lateral") for part in ("col", "row", "radius"))


def _labels(rec: dict) -> dict[str, float]:
    present = {"Pleural Effusion": rec["effusion_side"] != "none", "Pneumothorax": rec["pneumothorax_side"] != "none",
               "Consolidation": rec["consolidation_lobe"] != "none",
               "Cardiomegaly": str(rec["cardiomegaly"]).lower() in ("true", "1", "1.0"),
               "Lung Lesion": rec["nodule_lobe"] != "none"}
    labels = {k: POSITIVE if v else NEGATIVE for k, v in present.items()}
    labels["No Finding"] = NEGATIVE if any(present.values()) else POSITIVE
    return labels


def read_twin(root: str | Path, cfg: DataConfig, summary: ReadSummary) -> Collection:
    """Read a twin folder: each study gives a PA and a LATERAL row sharing its study id and split."""
    root = require_path(Path(root), "twin folder", "Write one with `cxrgen twin --n N --size S --out DIR`.")
    table = read_table(require_path(root / TWIN_MANIFEST, TWIN_MANIFEST, "The folder must hold twin.csv."),
                       REQUIRED, "twin manifest")
    rows = []
    for rec in table.to_dict("records"):
        report = f"FINDINGS: {rec['findings']}\nIMPRESSION: {rec['impression']}"
        for view, column in VIEW_COLUMNS.items():
            rows.append({"source": "twin", "image_path": str(root / rec[column]), "study_id": rec["study_id"],
                         "patient_id": rec["patient_id"], "view": view, "report": report,
                         "findings": rec["findings"], "impression": rec["impression"], "split": rec["split"],
                         **{c: rec.get(c, "") for c in TRUTH_COLUMNS}, **_labels(rec)})
    return Collection(rows=pd.DataFrame(rows), labelled=True, has_images=True, official_split=True)
