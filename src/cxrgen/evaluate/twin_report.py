"""Generated reports against a twin case's ground truth, read by the labeler (image -> report on the twin).

The issue's protocol for image -> report: "the labeler on the generated report against the truth". The
twin knows each case's findings, so a generated report is read by the cxrgen labeler and compared with
them, finding by finding, instead of with the labeler's reading of the case's reference report. The
difference matters on the twin's ``test`` split, whose reference reports use held-out wordings the
labeler reads differently ("pneumonia of the left upper lobe" is Pneumonia, not Consolidation; "rounded
opacity, likely a nodule" an uncertain Lung Lesion): scored against those readings, even a report that
states the exact truth in the training wordings loses ~0.25 of finding F1.

Twin findings and the labeler's observations that state them (``TWIN_OBSERVATIONS``):
effusion = Pleural Effusion, pneumothorax = Pneumothorax, consolidation = Consolidation or Pneumonia,
cardiomegaly = Cardiomegaly, nodule = Lung Lesion (positive or uncertain: "likely a nodule"). A finding's
side is the labeler's laterality of the first of its observations that carries one; the truth's side is
the effusion / pneumothorax side or the lobe's side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import POSITIVE, UNCERTAIN
from cxrgen.errors import DataError
from cxrgen.twin.findings import TWIN_FINDINGS, lobe_side

#: twin finding -> (labeler observations that state it, whether an uncertain mention counts).
TWIN_OBSERVATIONS: dict[str, tuple[tuple[str, ...], bool]] = {
    "effusion": (("Pleural Effusion",), False),
    "pneumothorax": (("Pneumothorax",), False),
    "consolidation": (("Consolidation", "Pneumonia"), False),
    "cardiomegaly": (("Cardiomegaly",), False),
    "nodule": (("Lung Lesion",), True),
}


def truth_findings(row: Mapping[str, Any]) -> dict[str, str | None]:
    """A twin row's findings: finding -> its side ("left", "right", "bilateral"), "" when present without
    a side (cardiomegaly), None when absent."""
    def side_or_none(value: Any) -> str | None:
        return None if str(value) in ("none", "nan", "") else str(value)

    lobe = lambda key: side_or_none(lobe_side(str(row.get(key, "none"))))  # noqa: E731
    heart = str(row.get("cardiomegaly", "")).lower() in ("true", "1", "1.0")
    return {"effusion": side_or_none(row.get("effusion_side", "none")),
            "pneumothorax": side_or_none(row.get("pneumothorax_side", "none")),
            "consolidation": lobe("consolidation_lobe"), "cardiomegaly": "" if heart else None,
            "nodule": lobe("nodule_lobe")}


def stated_findings(text: str) -> dict[str, str | None]:
    """The twin findings a report states, read by the labeler: finding -> its stated side ("" when it
    states none), None when the report does not state it positive."""
    result = label_report(text)
    out: dict[str, str | None] = {}
    for finding, (observations, uncertain_counts) in TWIN_OBSERVATIONS.items():
        accepted = (POSITIVE, UNCERTAIN) if uncertain_counts else (POSITIVE,)
        hits = [o for o in observations if result.labels.get(o) in accepted]
        sides = [result.details.get(o, {}).get("laterality") for o in hits]
        out[finding] = next((s for s in sides if s), "") if hits else None
    return out


def truth_report_scores(reports: Sequence[str], truths: Sequence[Mapping[str, str | None]]) -> dict[str, Any]:
    """Generated ``reports`` against per-case ``truths`` (:func:`truth_findings`): micro ``finding_f1`` of the
    stated findings, ``side_accuracy`` (truth findings with a side stated with that side: a missed finding counts
    as a wrong side), ``stated_side_accuracy`` (the same over the truth findings with a side that the report states:
    the side alone, apart from detection), ``negation_accuracy`` (absent findings not stated), ``exact`` (reports
    stating exactly the true findings) and per-finding F1."""
    if len(reports) != len(truths) or not reports:
        raise DataError(f"got {len(reports)} reports and {len(truths)} truths; give equal, non-zero numbers")
    counts = {f: [0, 0, 0] for f in TWIN_FINDINGS}  # tp, fp, fn
    sided = side_ok = stated_sided = absent = absent_ok = exact = 0
    for text, truth in zip(reports, truths, strict=True):
        stated = stated_findings(text)
        exact += all((stated[f] is None) == (truth[f] is None) for f in TWIN_FINDINGS)
        for f in TWIN_FINDINGS:
            said, true = stated[f] is not None, truth[f] is not None
            counts[f][0] += said and true
            counts[f][1] += said and not true
            counts[f][2] += true and not said
            if not true:
                absent += 1
                absent_ok += not said
            elif truth[f]:
                sided += 1
                side_ok += stated[f] == truth[f]
                stated_sided += said
    f1 = lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # noqa: E731
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    return {"finding_f1": f1(tp, fp, fn), "side_accuracy": side_ok / sided if sided else None,
            "stated_side_accuracy": side_ok / stated_sided if stated_sided else None,
            "negation_accuracy": absent_ok / absent if absent else None, "exact": exact / len(reports),
            "per_finding_f1": {f: f1(*c) for f, c in counts.items()}, "n": len(reports), "n_sided": sided,
            "n_sided_stated": stated_sided}
