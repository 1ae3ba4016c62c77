"""Rule-based CheXpert labeler: mentions, negation, uncertainty, aggregation, details, No Finding, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cxrgen.cli import main
from cxrgen.data.labeler import LabelResult, label_report, split_sentences
from cxrgen.data.manifest import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN

# (sentence, observation, expected value): every observation positive and negative at least once.
CASES = [
    ("The mediastinum is widened.", "Enlarged Cardiomediastinum", POSITIVE),
    ("Normal cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", NEGATIVE),
    ("Mild cardiomegaly.", "Cardiomegaly", POSITIVE),
    ("The heart is enlarged.", "Cardiomegaly", POSITIVE),
    ("Enlarged cardiac silhouette.", "Cardiomegaly", POSITIVE),
    ("Heart size is normal.", "Cardiomegaly", NEGATIVE),
    ("Normal heart size.", "Cardiomegaly", NEGATIVE),
    ("The heart is not enlarged.", "Cardiomegaly", NEGATIVE),
    ("Borderline cardiomegaly.", "Cardiomegaly", UNCERTAIN),
    ("Patchy opacity in the right lung base.", "Lung Opacity", POSITIVE),
    ("The lungs are clear.", "Lung Opacity", NEGATIVE),
    ("No focal airspace disease.", "Lung Opacity", NEGATIVE),
    ("A 1 cm nodule in the right upper lobe.", "Lung Lesion", POSITIVE),
    ("Large mass in the left hilum.", "Lung Lesion", POSITIVE),
    ("No nodules or masses.", "Lung Lesion", NEGATIVE),
    ("Nodular opacity may be a nipple shadow.", "Lung Lesion", UNCERTAIN),
    ("Calcified granuloma in the left upper lobe.", "Lung Lesion", None),
    ("Mild interstitial pulmonary edema.", "Edema", POSITIVE),
    ("No pulmonary edema.", "Edema", NEGATIVE),
    ("Mild pulmonary vascular congestion.", "Edema", UNCERTAIN),
    ("Right lower lobe consolidation.", "Consolidation", POSITIVE),
    ("No focal consolidation.", "Consolidation", NEGATIVE),
    ("Findings consistent with pneumonia.", "Pneumonia", POSITIVE),
    ("No evidence of pneumonia.", "Pneumonia", NEGATIVE),
    ("Opacity concerning for pneumonia.", "Pneumonia", UNCERTAIN),
    ("Bibasilar atelectasis.", "Atelectasis", POSITIVE),
    ("No atelectasis.", "Atelectasis", NEGATIVE),
    ("Opacity, likely atelectasis.", "Atelectasis", UNCERTAIN),
    ("Small left apical pneumothorax.", "Pneumothorax", POSITIVE),
    ("There is no pneumothorax.", "Pneumothorax", NEGATIVE),
    ("Pneumothorax is not seen.", "Pneumothorax", NEGATIVE),
    ("Small right pleural effusion.", "Pleural Effusion", POSITIVE),
    ("Free of pleural fluid.", "Pleural Effusion", NEGATIVE),
    ("Small pericardial effusion.", "Pleural Effusion", None),
    ("Blunting of the left costophrenic angle.", "Pleural Effusion", UNCERTAIN),
    ("Apical pleural thickening.", "Pleural Other", POSITIVE),
    ("No pleural thickening.", "Pleural Other", NEGATIVE),
    ("Old healed right rib fractures.", "Fracture", POSITIVE),
    ("No acute displaced fracture.", "Fracture", NEGATIVE),
    ("Age-indeterminate vertebral compression fracture.", "Fracture", POSITIVE),
    ("Endotracheal tube terminates 4 cm above the carina.", "Support Devices", POSITIVE),
    ("Left chest wall pacemaker with leads in the right ventricle.", "Support Devices", POSITIVE),
    ("The nasogastric tube has been removed.", "Support Devices", NEGATIVE),
]


@pytest.mark.parametrize(("text", "label", "expected"), CASES)
def test_single_sentence_labels(text: str, label: str, expected: float | None) -> None:
    assert label_report(text).labels.get(label) == expected


@pytest.mark.parametrize("text", [
    "No pleural effusion.", "Without pleural effusion.", "Negative for pleural effusion.",
    "No evidence of pleural effusion.", "The left effusion has resolved.", "Resolution of the left effusion.",
    "No pneumothorax, pleural effusion, or focal consolidation.",
    "No focal consolidation, suspicious pulmonary opacity, pneumothorax or pleural effusion.",
    "There is no pleural line to suggest pneumothorax or blunting to suggest pleural effusion.",
])
def test_negation_scope(text: str) -> None:
    assert label_report(text).labels["Pleural Effusion"] == NEGATIVE


@pytest.mark.parametrize("text", [
    "Cannot exclude a small pleural effusion.", "A small effusion is not excluded.",
    "Possible small left pleural effusion.", "Questionable left pleural effusion.",
    "Left basilar opacity may represent pleural effusion.", "Pleural effusion versus pleural thickening.",
    "Findings suggestive of a small effusion.", "Small bilateral pleural effusions are suspected.",
    "Pleural effusion cannot be ruled out.", "Effusion is difficult to entirely exclude.",
])
def test_uncertainty_scope(text: str) -> None:
    assert label_report(text).labels["Pleural Effusion"] == UNCERTAIN


@pytest.mark.parametrize("text", [
    "No change in the small left pleural effusion.", "No significant interval change in the left effusion.",
    "The left effusion has nearly resolved.", "Small effusion, consistent with prior.",
])
def test_pseudo_negation_keeps_positive(text: str) -> None:
    assert label_report(text).labels["Pleural Effusion"] == POSITIVE


def test_multiple_findings_in_one_sentence() -> None:
    result = label_report("No effusion but left lower lobe consolidation.")
    assert result.labels["Pleural Effusion"] == NEGATIVE
    assert result.labels["Consolidation"] == POSITIVE
    assert result.details["Consolidation"] == {"laterality": "left"}
    mixed = label_report("No pneumothorax. There is a small right effusion and possible pneumonia.")
    assert mixed.labels["Pneumothorax"] == NEGATIVE
    assert mixed.labels["Pleural Effusion"] == POSITIVE
    assert mixed.labels["Pneumonia"] == UNCERTAIN


def test_negation_does_not_reach_past_a_new_clause() -> None:
    result = label_report("No pneumothorax following placement of the left chest tube.")
    assert result.labels["Pneumothorax"] == NEGATIVE
    assert result.labels["Support Devices"] == POSITIVE
    suspicious = label_report("Suspicious nodule in the right upper lobe.")
    assert suspicious.labels["Lung Lesion"] == POSITIVE  # "suspicious X" states X; "suspicious for X" hedges


def test_aggregation_positive_beats_uncertain_beats_negative() -> None:
    assert label_report("No effusion. Possible effusion. Small effusion.").labels["Pleural Effusion"] == POSITIVE
    assert label_report("No effusion. Possible effusion.").labels["Pleural Effusion"] == UNCERTAIN
    assert label_report("Possible effusion. No effusion.").labels["Pleural Effusion"] == UNCERTAIN


@pytest.mark.parametrize(("text", "label", "details"), [
    ("Small left pleural effusion.", "Pleural Effusion", {"laterality": "left", "size": "small"}),
    ("Moderate right pneumothorax.", "Pneumothorax", {"laterality": "right", "size": "moderate"}),
    ("Large bilateral pleural effusions.", "Pleural Effusion", {"laterality": "bilateral", "size": "large"}),
    ("Bibasilar atelectasis.", "Atelectasis", {"laterality": "bilateral"}),
    ("Right lower lobe consolidation. Left lower lobe consolidation.", "Consolidation", {"laterality": "bilateral"}),
    ("Pleural effusion on the right.", "Pleural Effusion", {"laterality": "right"}),
    ("Small left effusion and large right pneumothorax.", "Pneumothorax", {"laterality": "right", "size": "large"}),
    ("Small to moderate left effusion.", "Pleural Effusion", {"laterality": "left", "size": "moderate"}),
    ("Effusion.", "Pleural Effusion", None),
])
def test_laterality_and_size(text: str, label: str, details: dict | None) -> None:
    assert label_report(text).details.get(label) == details


def test_details_only_for_the_winning_status() -> None:
    result = label_report("No left effusion. Small right effusion.")
    assert result.details["Pleural Effusion"] == {"laterality": "right", "size": "small"}
    assert "Pneumothorax" not in label_report("No large left pneumothorax.").details


def test_no_finding_rules() -> None:
    normal = label_report("FINDINGS: Heart size is normal. Lungs are clear. No effusion.\nIMPRESSION: Normal chest.")
    assert normal.labels["No Finding"] == POSITIVE
    assert label_report("Normal chest x-XXXX.").labels == {"No Finding": POSITIVE}
    assert label_report("ET tube in place. No acute process.").labels["No Finding"] == POSITIVE  # devices don't count
    assert "No Finding" not in label_report("Small left effusion.").labels
    assert "No Finding" not in label_report("Possible pneumonia.").labels
    assert label_report("  ").labels == {}


def test_result_serialisation() -> None:
    result = label_report("Small left effusion. No pneumothorax.")
    assert isinstance(result, LabelResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data == {"labels": {"Pneumothorax": 0.0, "Pleural Effusion": 1.0},
                    "details": {"Pleural Effusion": {"laterality": "left", "size": "small"}}}
    row = result.as_row()
    assert list(row) == list(CHEXPERT_LABELS)
    assert row["Pleural Effusion"] == POSITIVE and row["Pneumothorax"] == NEGATIVE
    assert math.isnan(row["Cardiomegaly"])


def test_split_sentences_keeps_decimals_and_splits_numbered_items() -> None:
    assert split_sentences("A 1.5 cm nodule. 1. Effusion. 2. No pneumothorax.") == [
        "A 1.5 cm nodule.", "1. Effusion.", "2. No pneumothorax."]


def test_cli_label_text(capsys: pytest.CaptureFixture) -> None:
    assert main(["label", "Small left pleural effusion. No pneumothorax."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"]["Pleural Effusion"] == 1.0
    assert out["details"]["Pleural Effusion"]["laterality"] == "left"


def test_cli_label_without_text_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["label"]) == 2
    assert "give report text" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_cli_check_iu(iu_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "iu.json"
    assert main(["label", "--check-iu", str(iu_archive), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert f"macro_f1 = {result['macro_f1']:.3f}" in printed
    assert set(result["per_class"]) == {"Cardiomegaly", "Pleural Effusion", "Atelectasis", "Pneumothorax",
                                        "Edema", "Lung Lesion", "Fracture"}
