"""The MIMIC-CXR-JPG reader on a tiny fake tree with PhysioNet's exact layout."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from mimic_fixture import STUDIES, build_mimic_tree

from cxrgen.config import DataConfig, PromptConfig
from cxrgen.data.images import read_image
from cxrgen.data.manifest import CHEXPERT_LABELS, read_manifest
from cxrgen.data.prepare import build_manifest, prepare
from cxrgen.errors import DataError


@pytest.fixture()
def mimic_root(tmp_path: Path) -> Path:
    return build_mimic_tree(tmp_path / "mimic")


def test_every_field(mimic_root: Path) -> None:
    df, summary = build_manifest("mimic", mimic_root, DataConfig())
    assert len(df) == 5 and summary.rows == 5 and summary.patients == 3
    assert summary.views == {"PA": 2, "LATERAL": 1, "AP": 2}
    row = df[df["study_id"] == "53189527"].iloc[0]
    assert row["source"] == "mimic"
    assert row["patient_id"] == "10000032"
    assert row["view"] == "AP"
    assert row["split"] == "train"
    assert row["image_path"].endswith(
        "files/p10/p10000032/s53189527/2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg")
    assert Path(row["image_path"]).exists()
    assert row["findings"].startswith("Moderate left pleural effusion with adjacent atelectasis.")
    assert row["impression"] == "Moderate left pleural effusion. Possible left lower lobe pneumonia."
    assert "cirrhosis" in row["indication"] and "___" not in row["indication"]
    assert row["prompt"] == row["impression"]  # impression first
    assert "FINAL REPORT" not in row["findings"]
    # labels straight from the CheXpert CSV: 1 / 0 / -1 / empty
    assert row["Pleural Effusion"] == 1.0 and row["Pneumonia"] == -1.0 and row["Cardiomegaly"] == 0.0
    assert math.isnan(row["Edema"])
    for _subject, study, images, _, labels in STUDIES:
        got = df[df["study_id"] == study]
        assert sorted(got["image_path"].map(lambda p: Path(p).stem)) == sorted(d for d, _, _ in images)
        for name in CHEXPERT_LABELS:
            want = labels.get(name, float("nan"))
            assert all((v == want) or (math.isnan(v) and math.isnan(want)) for v in got[name]), name


def test_official_split_kept(mimic_root: Path) -> None:
    df, _ = build_manifest("mimic", mimic_root, DataConfig())
    by_study = dict(zip(df["study_id"], df["split"], strict=True))
    assert by_study["57375967"] == "validate" and by_study["51000011"] == "test"


def test_prompt_section_findings(mimic_root: Path) -> None:
    cfg = DataConfig(prompt=PromptConfig(section="findings"))
    df, _ = build_manifest("mimic", mimic_root, cfg)
    row = df[df["study_id"] == "51000011"].iloc[0]
    assert row["prompt"] == "Enlarged cardiac silhouette. Mild pulmonary edema."


def test_uncompressed_csvs_and_missing_optional_parts(tmp_path: Path) -> None:
    root = build_mimic_tree(tmp_path / "m", gz=False)
    (root / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    df, summary = build_manifest("mimic", root, DataConfig())
    assert len(df) == 5
    assert any("labeler" in n for n in summary.notes) and any("split" in n for n in summary.notes)
    # labels now come from the labeler; the effusion study must still be positive
    assert (df[df["study_id"] == "53189527"]["Pleural Effusion"] == 1.0).all()
    assert set(df["split"]) <= {"train", "validate", "test"}
    assert df.groupby("patient_id")["split"].nunique().max() == 1


def test_missing_metadata_is_a_clear_error(mimic_root: Path) -> None:
    (mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(DataError, match="metadata.csv"):
        build_manifest("mimic", mimic_root, DataConfig())


def test_missing_reports_folder_is_a_clear_error(mimic_root: Path) -> None:
    import shutil

    shutil.rmtree(mimic_root / "mimic-cxr-reports")
    with pytest.raises(DataError, match="reports"):
        build_manifest("mimic", mimic_root, DataConfig())


def test_bad_report_and_bad_image_are_counted_skips(mimic_root: Path) -> None:
    report = next((mimic_root / "mimic-cxr-reports").rglob("s57375967.txt"))
    report.write_bytes(b"\xff\xfe\x00FINDINGS: \xc3\x28 bad")
    image = next((mimic_root / "files").rglob("aaaaaaaa-*.jpg"))
    image.write_bytes(b"not a jpeg at all")
    missing = next((mimic_root / "files").rglob("174413ec-*.jpg"))
    missing.unlink()
    df, summary = build_manifest("mimic", mimic_root, DataConfig())
    assert len(df) == 2
    assert summary.dropped["report unreadable or empty"] == 1
    assert summary.dropped["image unreadable"] == 1
    assert summary.dropped["image file missing"] == 1


def test_metadata_without_view_column(mimic_root: Path) -> None:
    import pandas as pd

    path = mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    meta = pd.read_csv(path).drop(columns=["ViewPosition"])
    with gzip.open(path, "wt") as fh:
        meta.to_csv(fh, index=False)
    with pytest.raises(DataError, match="ViewPosition"):
        build_manifest("mimic", mimic_root, DataConfig())


def test_prepare_writes_manifest_summary_and_config(mimic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare("mimic", mimic_root, out, DataConfig(), fmt="csv")
    df = read_manifest(out / "manifest.csv")
    assert len(df) == 5 and (out / "summary.json").exists() and (out / "data_config.yaml").exists()
    assert df["patient_id"].dtype == object or str(df["patient_id"].dtype).startswith("str")
    assert df.loc[0, "patient_id"] == "10000032"  # leading digits kept as text


def test_images_are_not_flipped(mimic_root: Path) -> None:
    df, _ = build_manifest("mimic", mimic_root, DataConfig())
    img = read_image(df.loc[0, "image_path"])
    half = img.shape[1] // 2
    assert np.mean(img[:, :half]) < np.mean(img[:, half:])  # the fixture's dark side stays left
