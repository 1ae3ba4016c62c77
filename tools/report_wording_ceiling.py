"""What a report that states a twin case's findings exactly, in the training wordings, scores against the case's
held-out-wording reference report (finding F1 and side accuracy by the labeler, as `cxrgen evaluate-multiview`
and the report autoencoder's metrics.json score them).

    python tools/report_wording_ceiling.py TWIN_DIR --iu ../shared/data/iu-xray-reports/NLMCXR_reports.tgz

The twin's test reports use held-out wordings, and the labeler reads CheXpert observations, not the twin's
findings: "Pneumonia of the left upper lobe" (held out) is Pneumonia, "Left upper lobe consolidation"
(training) is Consolidation; "Rounded 9 mm opacity ..., likely a nodule" is Lung Opacity + an uncertain
Lung Lesion, "A 9 mm nodule ..." a Lung Lesion. A report written in the training wordings from the exact
truth is therefore the ceiling of any generator that was only shown training wordings (image -> report),
and the floor a report autoencoder must beat to show it keeps the wording.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pandas as pd

from cxrgen.data.multiview import clip_report
from cxrgen.text.report_metrics import finding_agreement
from cxrgen.twin.findings import TwinFindings
from cxrgen.twin.reports import twin_report


def truth_reports(table: pd.DataFrame, seed: int, iu_archive: str | None, wording: str = "train") -> list[str]:
    """One report per row of a twin.csv table, written from its findings in ``wording``."""
    names = [f.name for f in dataclasses.fields(TwinFindings)]
    out = []
    for i, row in enumerate(table.to_dict("records")):
        findings = TwinFindings(**{k: bool(row[k]) if k == "cardiomegaly" else row[k] for k in names})
        text, impression = twin_report(findings, np.random.default_rng([seed, i]), wording, iu_archive)
        out.append(clip_report(f"FINDINGS: {text}\nIMPRESSION: {impression}", 400))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("twin_dir")
    parser.add_argument("--iu", default=None, help="the IU archive the twin was written with (its real sentences)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=200, help="the first N reports of the split (as metrics.json)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    table = pd.read_csv(f"{args.twin_dir}/twin.csv")
    table = table[table["split"] == args.split].head(args.n)
    references = [clip_report(f"FINDINGS: {f}\nIMPRESSION: {i}".strip(), 400)
                  for f, i in zip(table["findings"].fillna(""), table["impression"].fillna(""), strict=True)]
    runs = [finding_agreement(truth_reports(table, seed, args.iu), references) for seed in range(args.seeds)]
    summary = {k: float(np.mean([r[k] for r in runs])) for k in ("f1", "side_accuracy", "exact", "agreement")}
    print(json.dumps({"split": args.split, "n": len(references), "seeds": args.seeds, **summary}, indent=2))


if __name__ == "__main__":
    main()
