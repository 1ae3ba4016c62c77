"""Generated reports scored against the twin's truth (cxrgen.evaluate.twin_report)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxrgen.errors import DataError
from cxrgen.evaluate.twin_report import stated_findings, truth_findings, truth_report_scores
from cxrgen.twin.findings import sample_twin_findings
from cxrgen.twin.reports import twin_report


def _cases(n: int, wording: str, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = np.random.default_rng(seed)
    reports, truths = [], []
    for _ in range(n):
        f = sample_twin_findings(rng)
        text, impression = twin_report(f, rng, wording)
        reports.append(f"FINDINGS: {text}\nIMPRESSION: {impression}")
        truths.append(truth_findings({k: str(v) for k, v in dataclasses.asdict(f).items()}))
    return reports, truths


def test_truth_rows_map_sides_and_lobes() -> None:
    row = {"effusion_side": "bilateral", "pneumothorax_side": "none", "consolidation_lobe": "left_lower",
           "cardiomegaly": "True", "nodule_lobe": "right_upper", "nodule_mm": "9.0"}
    assert truth_findings(row) == {"effusion": "bilateral", "pneumothorax": None, "consolidation": "left",
                                   "cardiomegaly": "", "nodule": "right"}


def test_labeler_reads_findings_and_sides_of_a_report() -> None:
    stated = stated_findings("Small left pleural effusion. Right lower lobe consolidation. No pneumothorax.")
    assert stated["effusion"] == "left" and stated["consolidation"] == "right"
    assert stated["pneumothorax"] is None and stated["nodule"] is None


@pytest.mark.parametrize("wording", ["train", "heldout", "dev"])
def test_true_reports_score_high_and_shuffled_ones_low(wording: str) -> None:
    reports, truths = _cases(80, wording)
    good = truth_report_scores(reports, truths)
    bad = truth_report_scores(reports[1:] + reports[:1], truths)
    assert good["finding_f1"] >= 0.9 and good["side_accuracy"] >= 0.8 and good["negation_accuracy"] >= 0.95
    assert bad["finding_f1"] < good["finding_f1"] - 0.3 and bad["side_accuracy"] < good["side_accuracy"] - 0.3
    empty = truth_report_scores(["No acute cardiopulmonary process."] * len(truths), truths)
    assert empty["finding_f1"] == 0.0 and empty["negation_accuracy"] == 1.0


def test_unequal_inputs_are_refused() -> None:
    with pytest.raises(DataError, match="equal"):
        truth_report_scores(["a"], [])


def test_stated_side_accuracy_reads_the_side_apart_from_detection() -> None:
    truths = [{"effusion": "left", "pneumothorax": "right", "consolidation": None, "cardiomegaly": None,
               "nodule": "right"}] * 2
    reports = ["Small left pleural effusion. Small right apical pneumothorax.",  # nodule missed, sides right
               "Small right pleural effusion. Small right apical pneumothorax."]  # nodule missed, one side wrong
    s = truth_report_scores(reports, truths)
    assert s["n_sided"] == 6 and s["n_sided_stated"] == 4
    assert s["side_accuracy"] == 3 / 6  # a missed finding counts as a wrong side
    assert s["stated_side_accuracy"] == 3 / 4  # only the stated findings' sides
    assert truth_report_scores(["No acute process."], truths[:1])["stated_side_accuracy"] is None
