"""MIMIC-CXR-JPG exactly as PhysioNet lays it out (files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg + CSVs)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrgen.config import DataConfig
from cxrgen.data.manifest import CHEXPERT_LABELS, ReadSummary
from cxrgen.data.readers.base import Collection, find_csv, read_table, require_path
from cxrgen.data.reports import parse_sections, read_report_file
from cxrgen.errors import DataError, ReportError

log = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0"
GET_IT = "Download it from PhysioNet (MIMIC-CXR-JPG 2.0.0) into the root folder."


def _study_dir(subject_id: str, study_id: str) -> Path:
    """files/pXX/pNNNNNNNN/sNNNNNNNN relative path of a study."""
    return Path("files") / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def _read_reports(reports_root: Path, studies: pd.DataFrame) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse each study's report once: (sections by study, why a study's report is unusable)."""
    parsed: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for subject_id, study_id in tqdm(studies.itertuples(index=False), total=len(studies),
                                     desc="MIMIC reports", disable=len(studies) < 500):
        path = reports_root / _study_dir(subject_id, study_id).with_suffix(".txt")
        if not path.exists():
            log.warning("report file missing: %s", path)
            failed[study_id] = "report file missing"
            continue
        try:
            text = read_report_file(path)
        except ReportError as exc:
            log.warning("%s", exc)
            failed[study_id] = "report unreadable or empty"
            continue
        parsed[study_id] = {"report": text, **parse_sections(text)}
    return parsed, failed


def read_mimic(root: str | Path, cfg: DataConfig, summary: ReadSummary,
               reports: str | Path | None = None) -> Collection:
    """Read MIMIC-CXR-JPG at ``root``; reports default to ``root/mimic-cxr-reports``.

    The metadata CSV and the reports are required; the official split and CheXpert labels are
    used when present (else a patient-level split and the cxrgen labeler, both noted).
    """
    root = require_path(Path(root), "MIMIC-CXR-JPG root", GET_IT)
    require_path(root / "files", "MIMIC-CXR-JPG image folder 'files'", GET_IT)
    meta_path = find_csv(root, f"{PREFIX}-metadata")
    if meta_path is None:
        raise DataError(f"{root} lacks {PREFIX}-metadata.csv(.gz) (ViewPosition). {GET_IT}")
    reports_root = require_path(Path(reports) if reports else root / "mimic-cxr-reports",
                                "MIMIC-CXR reports folder",
                                "Unzip mimic-cxr-reports.zip there or pass reports=DIR.")
    meta = read_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], "metadata")

    split_path = find_csv(root, f"{PREFIX}-split")
    official = split_path is not None
    if official:
        split = read_table(split_path, ["dicom_id", "split"], "split file")
        meta = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
        meta["split"] = meta["split"].fillna("")
    else:
        meta["split"] = ""
        summary.notes.append(f"no {PREFIX}-split.csv: patient-level split made from the seed")

    chexpert_path = find_csv(root, f"{PREFIX}-chexpert")
    labelled = chexpert_path is not None
    if labelled:
        chexpert = read_table(chexpert_path, ["subject_id", "study_id", *CHEXPERT_LABELS], "CheXpert labels")
        meta = meta.merge(chexpert[["subject_id", "study_id", *CHEXPERT_LABELS]],
                          on=["subject_id", "study_id"], how="left")
        for name in CHEXPERT_LABELS:
            meta[name] = pd.to_numeric(meta[name], errors="coerce")
    else:
        summary.notes.append(f"no {PREFIX}-chexpert.csv: labels from the cxrgen labeler")

    studies = meta[["subject_id", "study_id"]].drop_duplicates()
    parsed, failed = _read_reports(reports_root, studies)
    rows = []
    for rec in meta.to_dict("records"):
        sections = parsed.get(rec["study_id"])
        if sections is None:
            summary.drop(failed[rec["study_id"]])
            continue
        rel = _study_dir(rec["subject_id"], rec["study_id"]) / f"{rec['dicom_id']}.jpg"
        row = {
            "source": "mimic",
            "image_path": str(root / rel),
            "study_id": rec["study_id"],
            "patient_id": rec["subject_id"],
            "view": (rec["ViewPosition"] or "UNKNOWN").upper(),
            "split": rec["split"],
            "dicom_id": rec["dicom_id"],
            **{k: sections.get(k, "") for k in ("report", "findings", "impression", "indication")},
        }
        if labelled:
            row.update({name: rec[name] for name in CHEXPERT_LABELS})
        rows.append(row)
    df = pd.DataFrame(rows)
    if labelled and len(df):
        unlabelled = df[list(CHEXPERT_LABELS)].isna().all(axis=1).to_numpy()
        if np.any(unlabelled):
            summary.notes.append(f"{int(unlabelled.sum())} image(s) have no CheXpert row (labels empty)")
    return Collection(rows=df, labelled=labelled, has_images=True, official_split=official)
