"""The generic CSV reader and prepare's bad-input handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.cli import main
from cxrgen.config import DataConfig
from cxrgen.data.prepare import build_manifest, prepare
from cxrgen.errors import ConfigError, DataError, MissingColumnsError


@pytest.fixture()
def csv_collection(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"file": f"img/{i}.png", "pid": f"P{i // 2}",
                     "text": "FINDINGS: Heart size is enlarged.\nIMPRESSION: Cardiomegaly." if i % 2
                     else "No acute cardiopulmonary process.",
                     "edema_flag": 1 if i == 3 else ""})
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    return tmp_path / "c.csv"


def test_column_mapping(csv_collection: Path) -> None:
    cols = {"image_path": "file", "patient_id": "pid", "report": "text"}
    df, summary = build_manifest("csv", csv_collection, DataConfig(), cols)
    assert len(df) == 12 and summary.patients == 6
    assert Path(df.loc[0, "image_path"]).is_absolute() and Path(df.loc[0, "image_path"]).exists()
    odd = df[df["image_path"].str.endswith("/1.png")].iloc[0]
    assert odd["impression"] == "Cardiomegaly." and odd["findings"] == "Heart size is enlarged."
    even = df[df["image_path"].str.endswith("/0.png")].iloc[0]
    assert even["prompt"] == "No acute cardiopulmonary process."
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_labels_from_labeler_when_none_mapped(csv_collection: Path) -> None:
    cols = {"image_path": "file", "patient_id": "pid", "report": "text"}
    df, _ = build_manifest("csv", csv_collection, DataConfig(), cols)
    odd = df[df["image_path"].str.endswith("/1.png")].iloc[0]
    assert odd["Cardiomegaly"] == 1.0


def test_label_column_mapped(csv_collection: Path) -> None:
    cols = {"image_path": "file", "patient_id": "pid", "report": "text"}
    df, _ = build_manifest("csv", csv_collection, DataConfig(), {**cols, "Edema": "edema_flag"})
    assert df["Edema"].sum() == 1.0 and df["Cardiomegaly"].isna().all()


def test_missing_columns_are_named(csv_collection: Path) -> None:
    with pytest.raises(MissingColumnsError, match="image_path=COLUMN"):
        build_manifest("csv", csv_collection, DataConfig(), {"report": "text"})
    with pytest.raises(MissingColumnsError, match="lacks column"):
        build_manifest("csv", csv_collection, DataConfig(), {"image_path": "nope", "report": "text"})
    with pytest.raises(MissingColumnsError, match="no report text"):
        build_manifest("csv", csv_collection, DataConfig(), {"image_path": "file"})
    with pytest.raises(ConfigError, match="unknown manifest field"):
        build_manifest("csv", csv_collection, DataConfig(), {"imagepath": "file"})


def test_relative_root_gives_absolute_paths(csv_collection: Path, monkeypatch) -> None:
    monkeypatch.chdir(csv_collection.parent.parent)
    rel = Path(csv_collection.parent.name) / csv_collection.name
    df, _ = build_manifest("csv", rel, DataConfig(), {"image_path": "file", "report": "text"})
    assert all(Path(p).is_absolute() and Path(p).exists() for p in df["image_path"])


def test_unknown_source_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        build_manifest("chexpert", tmp_path, DataConfig())
    with pytest.raises(DataError, match="not found"):
        build_manifest("covid", tmp_path / "nope", DataConfig())


def test_unwritable_out_is_a_clear_error(csv_collection: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="writable"):
        prepare("csv", csv_collection, blocker / "out", DataConfig(),
                columns={"image_path": "file", "report": "text"})


def test_cli_error_exit_code(csv_collection: Path, tmp_path: Path, capsys) -> None:
    code = main(["prepare", "csv", str(csv_collection), "--out", str(tmp_path / "o"),
                 "--column", "report=text"])
    assert code == 2
    assert "image_path=COLUMN" in capsys.readouterr().err


def test_cli_prepare_csv_writes_files(csv_collection: Path, tmp_path: Path, capsys) -> None:
    code = main(["prepare", "csv", str(csv_collection), "--out", str(tmp_path / "o"), "--format", "csv",
                 "--column", "image_path=file", "--column", "patient_id=pid", "--column", "report=text"])
    assert code == 0 and (tmp_path / "o" / "manifest.csv").exists()
    assert "12 rows, 6 patients" in capsys.readouterr().out
