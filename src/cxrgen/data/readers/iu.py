"""The IU X-ray report archive as a text-only collection (a report corpus; no images here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.config import DataConfig
from cxrgen.data.iu import iu_report_text, read_iu_archive
from cxrgen.data.manifest import ReadSummary
from cxrgen.data.readers.base import Collection, require_path


def read_iu(path: str | Path, cfg: DataConfig, summary: ReadSummary) -> Collection:
    """One row per IU report: sections, MeSH major terms and image ids; no image paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "NLMCXR_reports.tgz"
    require_path(path, "IU X-ray report archive", "Give the path of NLMCXR_reports.tgz.")
    rows = []
    for report in read_iu_archive(path):
        rows.append({
            "source": "iu",
            "image_path": "",
            "study_id": report.uid,
            "patient_id": report.uid,
            "view": "",
            "report": iu_report_text(report),
            **{k: report.sections.get(k, "") for k in ("findings", "impression", "indication")},
            "mesh_major": "; ".join(report.mesh_major),
            "image_ids": " ".join(report.image_ids),
        })
    summary.notes.append("text only: no image files (a report corpus for prompts and text encoders)")
    return Collection(rows=pd.DataFrame(rows), labelled=False, has_images=False, official_split=False)
