"""The labeler scored against the MeSH terms of the IU X-ray reports: scoring arithmetic and the real targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrgen.data.iu import IUReport
from cxrgen.data.labeler_check import MESH_FOR_LABEL, check_labeler_on_iu, disagreements, mesh_heads, score_labels
from cxrgen.data.manifest import NEGATIVE, POSITIVE, UNCERTAIN

#: Targets of issue 2: a plain keyword-with-"no" labeler scores about 0.82 macro-F1.
MACRO_F1_TARGET = 0.88
CLASS_F1_TARGET = 0.75


def test_mesh_heads_use_the_part_before_the_slash() -> None:
    assert mesh_heads(["Pulmonary Atelectasis/base/left", " Nodule /lung", "normal"]) == {
        "Pulmonary Atelectasis", "Nodule", "normal"}


def test_score_labels_counts_and_uncertain_switch() -> None:
    truth = [{"Cardiomegaly"}, {"Cardiomegaly"}, set(), {"Mass"}]
    predicted = [{"Cardiomegaly": POSITIVE}, {"Cardiomegaly": UNCERTAIN}, {"Cardiomegaly": POSITIVE},
                 {"Lung Lesion": NEGATIVE}]
    strict = score_labels(truth, predicted, uncertain_positive=False)["per_class"]
    assert strict["Cardiomegaly"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert strict["Lung Lesion"]["support"] == 1 and strict["Lung Lesion"]["f1"] == 0.0
    loose = score_labels(truth, predicted, uncertain_positive=True)
    assert loose["per_class"]["Cardiomegaly"]["recall"] == 1.0
    f1s = [s["f1"] for s in loose["per_class"].values()]
    assert loose["macro_f1"] == pytest.approx(sum(f1s) / len(MESH_FOR_LABEL))


def test_disagreements_lists_false_positives_and_negatives() -> None:
    def report(uid: str, findings: str, mesh: tuple[str, ...]) -> IUReport:
        return IUReport(uid, {"findings": findings, "impression": ""}, mesh, ())

    reports = [report("a", "Small left effusion.", ()), report("b", "No effusion.", ("Pleural Effusion/left",)),
               report("c", "Large effusion.", ("Pleural Effusion",))]
    assert disagreements(reports, "Pleural Effusion") == {"false_positive": ["a"], "false_negative": ["b"]}


@pytest.mark.shared_data
@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_labeler_meets_targets_on_iu(iu_archive: Path) -> None:
    result = check_labeler_on_iu(iu_archive)
    assert result["n_reports"] == 3955
    assert result["uncertain_counts_as"] == "negative"
    per_class = result["per_class"]
    assert set(per_class) == set(MESH_FOR_LABEL)
    low = {k: round(v["f1"], 3) for k, v in per_class.items() if v["f1"] < CLASS_F1_TARGET}
    assert not low, f"classes below F1 {CLASS_F1_TARGET}: {low}"
    assert result["macro_f1"] >= MACRO_F1_TARGET
    assert all(v["support"] > 0 for v in per_class.values())
    # the other way of counting uncertain labels is reported too, and is a different measurement
    assert set(result["uncertain_as_positive"]["per_class"]) == set(MESH_FOR_LABEL)
    assert result["uncertain_as_positive"]["macro_f1"] != result["macro_f1"]
