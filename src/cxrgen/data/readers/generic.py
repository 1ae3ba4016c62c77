"""Any collection described by one CSV: column names are configurable."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.config import DataConfig
from cxrgen.data.manifest import CHEXPERT_LABELS, ReadSummary
from cxrgen.data.readers.base import Collection, read_table, require_path
from cxrgen.data.reports import clean_text, parse_sections
from cxrgen.errors import ConfigError, MissingColumnsError

#: Manifest fields a generic CSV can provide (label names map too).
FIELDS: tuple[str, ...] = ("image_path", "patient_id", "study_id", "view", "report", "findings",
                           "impression", "indication", "prompt", "split")
TEXT_FIELDS: tuple[str, ...] = ("report", "findings", "impression", "prompt")


def _resolve_columns(available: list[str], columns: dict[str, str]) -> dict[str, str]:
    """Manifest field -> CSV column: explicit mapping first, else a column of the field's own name."""
    unknown = sorted(set(columns) - set(FIELDS) - set(CHEXPERT_LABELS))
    if unknown:
        raise ConfigError(f"unknown manifest field(s) {unknown} in --column; valid: {list(FIELDS)} "
                          "and the 14 CheXpert label names")
    mapping = {f: c for f, c in columns.items()}
    for name in (*FIELDS, *CHEXPERT_LABELS):
        if name not in mapping and name in available:
            mapping[name] = name
    missing = [c for c in mapping.values() if c not in available]
    if missing:
        raise MissingColumnsError(f"CSV lacks column(s) {missing}; it has {available}")
    return mapping


def read_csv_collection(path: str | Path, cfg: DataConfig, summary: ReadSummary,
                        columns: dict[str, str] | None = None) -> Collection:
    """Read a CSV with one row per image; image paths may be relative to the CSV's folder."""
    path = require_path(Path(path), "CSV file", "Give the path of the collection's CSV file.")
    header = read_table(path, [], "collection CSV")
    mapping = _resolve_columns(list(header.columns), dict(columns or {}))
    if "image_path" not in mapping:
        raise MissingColumnsError(
            f"{path} has no image path column; name it with --column image_path=COLUMN")
    if not any(f in mapping for f in TEXT_FIELDS):
        raise MissingColumnsError(
            f"{path} has no report text; map one of {list(TEXT_FIELDS)} with --column FIELD=COLUMN")
    df = pd.DataFrame({field: header[col] for field, col in mapping.items()})
    base = path.parent
    df["image_path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["image_path"]]
    df["source"] = "csv"
    if "patient_id" not in mapping:
        df["patient_id"] = [f"row{i}" for i in range(len(df))]
        summary.notes.append("no patient id column: each image is its own patient (splits may leak "
                             "patients; map one with --column patient_id=COLUMN)")
    if "study_id" not in mapping:
        df["study_id"] = df["patient_id"]
    if "report" in df and not ({"findings", "impression"} & set(mapping)):
        sections = [parse_sections(str(t)) for t in df["report"]]
        for key in ("findings", "impression", "indication"):
            df[key] = [s.get(key, "") for s in sections]
        # a report without section headers is its own impression
        df["impression"] = [s.get("impression") or (clean_text(str(r)) if not s.get("findings") else "")
                            for s, r in zip(sections, df["report"], strict=True)]
    labels = [n for n in CHEXPERT_LABELS if n in mapping]
    for name in labels:
        df[name] = pd.to_numeric(df[name], errors="coerce")
    official = "split" in mapping and bool((df["split"].astype(str).str.strip() != "").all())
    return Collection(rows=df, labelled=bool(labels), has_images=True, official_split=official)
