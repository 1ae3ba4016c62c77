"""The manifest: one table type that every reader produces and every later stage consumes."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.errors import DataError, MissingColumnsError

log = logging.getLogger(__name__)

#: The 14 CheXpert observations, in CheXpert's column order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: Label values: positive, negative, uncertain; NaN means "not mentioned".
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

#: Columns every manifest has, in order. Readers may append source-specific extra columns.
TEXT_COLUMNS: tuple[str, ...] = (
    "source",
    "image_path",
    "study_id",
    "patient_id",
    "view",
    "prompt",
    "report",
    "findings",
    "impression",
    "indication",
    "split",
)
MANIFEST_COLUMNS: tuple[str, ...] = TEXT_COLUMNS + CHEXPERT_LABELS

SPLITS: tuple[str, ...] = ("train", "validate", "test")


@dataclass
class ReadSummary:
    """What a reader did: kept rows and every dropped or flagged row counted by reason."""

    source: str
    rows: int = 0
    patients: int = 0
    views: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped for ``reason`` (also logged, so nothing vanishes silently)."""
        self.dropped[reason] += n
        log.info("%s: dropped %d row(s): %s", self.source, n, reason)

    def fill_from(self, manifest: pd.DataFrame) -> ReadSummary:
        """Set the counts of kept rows from the finished manifest."""
        self.rows = len(manifest)
        self.patients = int(manifest["patient_id"].nunique()) if len(manifest) else 0
        self.views = {str(k): int(v) for k, v in manifest["view"].value_counts().items()}
        self.splits = {str(k): int(v) for k, v in manifest["split"].value_counts().items()}
        return self

    def to_dict(self) -> dict:
        """A JSON-ready dict of the summary."""
        return {
            "source": self.source,
            "rows": self.rows,
            "patients": self.patients,
            "views": dict(self.views),
            "splits": dict(self.splits),
            "dropped": dict(self.dropped),
            "dropped_total": int(sum(self.dropped.values())),
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """A short human-readable summary for the CLI."""
        lines = [
            f"{self.source}: {self.rows} rows, {self.patients} patients",
            "  views:  " + ", ".join(f"{k or '(none)'}={v}" for k, v in sorted(self.views.items())),
            "  splits: " + ", ".join(f"{k}={v}" for k, v in sorted(self.splits.items())),
        ]
        total = sum(self.dropped.values())
        lines.append(f"  dropped: {total}")
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {n:6d}  {reason}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def new_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest from row dicts: missing core columns become empty, core columns come first."""
    df = pd.DataFrame(rows)
    for col in TEXT_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    for col in CHEXPERT_LABELS:
        if col not in df.columns:
            df[col] = np.nan
    extras = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[list(MANIFEST_COLUMNS) + extras]
    for col in TEXT_COLUMNS:
        df[col] = df[col].fillna("").astype(str)
    for col in CHEXPERT_LABELS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df.reset_index(drop=True)


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Check that ``df`` is a manifest: core columns present, labels in {1, 0, -1, NaN}."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise MissingColumnsError(
            f"not a cxrgen manifest: missing columns {missing}; build it with `cxrgen prepare`"
        )
    for col in CHEXPERT_LABELS:
        values = set(df[col].dropna().unique().tolist())
        bad = values - {POSITIVE, NEGATIVE, UNCERTAIN}
        if bad:
            raise DataError(f"manifest column {col!r} has values {sorted(bad)}; allowed: 1, 0, -1, empty")
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as parquet (``.parquet``) or CSV (``.csv``), chosen by the suffix."""
    path = Path(path)
    validate_manifest(df)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise DataError(f"cannot write manifest {path}: use a .parquet or .csv file name")
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` and validate it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest {path} does not exist; create it with `cxrgen prepare`")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                         na_values={c: [""] for c in CHEXPERT_LABELS})
    else:
        raise DataError(f"cannot read manifest {path}: expected a .parquet or .csv file")
    return validate_manifest(new_manifest(df.to_dict("records")))
