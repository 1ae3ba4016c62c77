"""The manifest table: schema, validation, parquet/CSV round trip, summary."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cxrgen.data.manifest import (
    CHEXPERT_LABELS,
    MANIFEST_COLUMNS,
    ReadSummary,
    new_manifest,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from cxrgen.errors import DataError, MissingColumnsError


def _rows():
    return [{"image_path": "a.png", "patient_id": "007", "prompt": "Left effusion.",
             "Pleural Effusion": 1, "Pneumonia": -1, "extra": "x"},
            {"image_path": "b.png", "patient_id": "008", "prompt": "Normal.", "No Finding": 1.0}]


def test_new_manifest_columns_and_types() -> None:
    df = new_manifest(_rows())
    assert tuple(df.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert df.columns[-1] == "extra"
    assert len(CHEXPERT_LABELS) == 14
    assert df.loc[0, "Pleural Effusion"] == 1.0 and math.isnan(df.loc[1, "Pleural Effusion"])
    assert df.loc[0, "split"] == ""


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    df = new_manifest(_rows())
    path = write_manifest(df, tmp_path / f"m{suffix}")
    back = read_manifest(path)
    assert back["patient_id"].tolist() == ["007", "008"]
    assert back.loc[0, "Pneumonia"] == -1.0 and math.isnan(back.loc[0, "Edema"])
    assert back.loc[1, "No Finding"] == 1.0 and back.loc[0, "extra"] == "x"


def test_validation_errors(tmp_path: Path) -> None:
    df = new_manifest(_rows())
    with pytest.raises(MissingColumnsError, match="cxrgen prepare"):
        validate_manifest(df.drop(columns=["prompt"]))
    df.loc[0, "Edema"] = 2.0
    with pytest.raises(DataError, match="Edema"):
        validate_manifest(df)
    with pytest.raises(DataError, match=".parquet or .csv"):
        write_manifest(new_manifest(_rows()), tmp_path / "m.xlsx")
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "none.parquet")


def test_summary_counts() -> None:
    s = ReadSummary("x")
    s.drop("bad", 2)
    s.drop("bad")
    s.fill_from(new_manifest(_rows()))
    d = s.to_dict()
    assert d["dropped"] == {"bad": 3} and d["dropped_total"] == 3 and d["patients"] == 2
    assert "3  bad" in s.format()
    s.views = {"": 2}
    assert "(none)=2" in s.format()
