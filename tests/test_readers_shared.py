"""The readers on the three shared sets (real data; skipped with a reason outside CI when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrgen.cli import main
from cxrgen.config import DataConfig
from cxrgen.data.manifest import read_manifest
from cxrgen.data.prepare import build_manifest

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def covid(shared_data: Path):
    return build_manifest("covid", shared_data / "covid-cxr-256", DataConfig())


def test_covid_counts_and_views(covid) -> None:
    df, summary = covid
    assert summary.rows + sum(summary.dropped.values()) == 594
    assert summary.patients <= 315 and len(df) > 550
    assert set(df["view"]) <= {"PA", "AP", "AP SUPINE", "LATERAL", "UNKNOWN"}
    assert summary.views["LATERAL"] == 50


def test_covid_duplicates_never_cross_splits(covid) -> None:
    df, summary = covid
    dups = df[df.duplicated("image_sha1", keep=False)]
    assert (dups.groupby("image_sha1")["split"].nunique() == 1).all()
    # five files listed under two patient ids (plus one file saved twice for one patient)
    assert (dups.groupby("image_sha1")["patient_id"].nunique() == 2).sum() == 5
    assert any("duplicate image group" in n for n in summary.notes)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_covid_prompts_and_labels(covid) -> None:
    df, _ = covid
    assert (df["prompt"].str.contains("chest radiograph", case=False)).all()
    covid19 = df[df["finding"] == "COVID-19"]
    assert (covid19["Pneumonia"] == 1.0).all() and (covid19["No Finding"] == 0.0).all()
    row = df[df["image_path"].str.contains("auntminnie-a-2020_01_28")].iloc[0]
    assert row["prompt"].startswith("PA chest radiograph. COVID-19.")
    assert "upper lobe of the left lung" in row["prompt"]
    assert len(row["prompt"].split()) <= 77


@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_pediatric(shared_data: Path) -> None:
    df, summary = build_manifest("pediatric", shared_data / "pediatric-pneumonia-224", DataConfig())
    assert summary.rows == 5216 and summary.patients == 2913
    assert df["finding"].value_counts().to_dict() == {
        "bacterial pneumonia": 2530, "viral pneumonia": 1345, "normal": 1341}
    assert set(df["prompt"]) == {"Pediatric AP chest radiograph. Normal.",
                                 "Pediatric AP chest radiograph. Bacterial pneumonia.",
                                 "Pediatric AP chest radiograph. Viral pneumonia."}
    assert ((df["finding"] == "normal") == (df["No Finding"] == 1.0)).all()
    assert set(df["split"]) == {"train", "validate", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    shares = df["split"].value_counts(normalize=True)
    assert 0.75 < shares["train"] < 0.85


@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_iu_text_corpus(shared_data: Path) -> None:
    df, summary = build_manifest("iu", shared_data / "iu-xray-reports", DataConfig())
    assert summary.rows + sum(summary.dropped.values()) == 3955
    assert (df["image_path"] == "").all()
    assert summary.rows > 3000
    assert df["prompt"].str.len().min() >= 7
    assert not df["prompt"].str.contains("XXXX").any()
    assert (df["Cardiomegaly"] == 1.0).sum() > 100  # labels from the labeler


def test_cli_prepare_prints_summary(shared_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["prepare", "covid", str(shared_data / "covid-cxr-256"), "--out", str(tmp_path),
                 "--set", "views=[PA, AP]"])
    out = capsys.readouterr().out
    assert code == 0
    assert "covid:" in out and "view not in ['AP', 'PA']" in out
    df = read_manifest(tmp_path / "manifest.parquet")
    assert set(df["view"]) == {"PA", "AP"}
