"""Score the rule-based labeler against the MeSH major terms of the IU X-ray reports (an independent label source).

A MeSH major term counts by its part before the first "/" ("Pulmonary Atelectasis/base/left" is
"Pulmonary Atelectasis"). The headline scores count only POSITIVE (1) as a predicted positive:
IU's indexers coded stated findings and mostly left hedges ("may represent edema", "atelectasis
versus scar", "differential includes ...") unindexed, except "borderline cardiomegaly". The scores
with UNCERTAIN (-1) counted as positive are kept under "uncertain_as_positive" for comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cxrgen.data.iu import IUReport, iu_report_text, read_iu_archive
from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import POSITIVE, UNCERTAIN

#: CheXpert observation -> the MeSH major terms (before "/") that mark it in IU.
MESH_FOR_LABEL: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly",),
    "Pleural Effusion": ("Pleural Effusion",),
    "Atelectasis": ("Pulmonary Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Edema": ("Pulmonary Edema",),
    "Lung Lesion": ("Nodule", "Mass"),
    "Fracture": ("Fractures, Bone",),
}


def mesh_heads(terms: Iterable[str]) -> set[str]:
    """The MeSH major terms by their part before the first "/", whitespace-stripped."""
    return {t.split("/", 1)[0].strip() for t in terms}


def _scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}


def score_labels(truth: list[set[str]], predicted: list[dict[str, float]], uncertain_positive: bool) -> dict:
    """Per-class precision, recall, F1 and support, and their macro-F1, over paired reports."""
    hits = {POSITIVE, UNCERTAIN} if uncertain_positive else {POSITIVE}
    per_class: dict[str, dict[str, float]] = {}
    for label, terms in MESH_FOR_LABEL.items():
        tp = fp = fn = 0
        for heads, labels in zip(truth, predicted, strict=True):
            actual = any(t in heads for t in terms)
            guess = labels.get(label) in hits
            tp += actual and guess
            fp += guess and not actual
            fn += actual and not guess
        per_class[label] = _scores(tp, fp, fn)
    macro = sum(s["f1"] for s in per_class.values()) / len(per_class)
    return {"per_class": per_class, "macro_f1": macro}


def disagreements(reports: list[IUReport], label: str, uncertain_positive: bool = False) -> dict[str, list[str]]:
    """Uids of false positives and false negatives for one class, for reading the rules' mistakes."""
    hits = {POSITIVE, UNCERTAIN} if uncertain_positive else {POSITIVE}
    out: dict[str, list[str]] = {"false_positive": [], "false_negative": []}
    for r in reports:
        actual = bool(mesh_heads(r.mesh_major) & set(MESH_FOR_LABEL[label]))
        guess = label_report(iu_report_text(r)).labels.get(label) in hits
        if guess != actual:
            out["false_positive" if guess else "false_negative"].append(r.uid)
    return out


def check_labeler_on_iu(archive: str | Path) -> dict:
    """Label each IU report (findings + impression) and score it against its MeSH major terms.

    Returns ``{"per_class": {name: {precision, recall, f1, support}}, "macro_f1", "n_reports",
    "uncertain_counts_as": "negative", "uncertain_as_positive": {"per_class", "macro_f1"}}``.
    """
    reports = read_iu_archive(archive)
    truth = [mesh_heads(r.mesh_major) for r in reports]
    predicted = [label_report(iu_report_text(r)).labels for r in reports]
    result = score_labels(truth, predicted, uncertain_positive=False)
    result["n_reports"] = len(reports)
    result["uncertain_counts_as"] = "negative"
    result["uncertain_as_positive"] = score_labels(truth, predicted, uncertain_positive=True)
    return result
