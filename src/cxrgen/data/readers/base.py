"""What a reader returns, and small helpers readers share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrgen.errors import DataError, MissingColumnsError


@dataclass
class Collection:
    """Raw rows of one collection, before labelling, prompt filtering and splitting.

    Attributes:
        rows: manifest-shaped rows (see ``cxrgen.data.manifest``); ``prompt`` may be empty
            (then it is built from the report sections) and labels may be absent.
        labelled: the rows carry CheXpert labels from the source (else the labeler adds them).
        has_images: rows point at image files (False for text-only corpora).
        official_split: the ``split`` column is the collection's own split.
    """

    rows: pd.DataFrame
    labelled: bool = False
    has_images: bool = True
    official_split: bool = False


def require_path(path: Path, what: str, hint: str) -> Path:
    """Return ``path`` if it exists, else raise a DataError naming it and what to do."""
    if not path.exists():
        raise DataError(f"{what} not found: {path}. {hint}")
    return path


def read_table(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV (plain or .gz) as strings and check it has the ``required`` columns."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}; check the file is an intact CSV") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MissingColumnsError(
            f"{what} {path} lacks column(s) {missing}; it has {list(df.columns)}"
        )
    return df


def find_csv(root: Path, stem: str) -> Path | None:
    """``root/stem.csv`` or ``root/stem.csv.gz``, whichever exists."""
    for suffix in (".csv", ".csv.gz"):
        candidate = root / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None
