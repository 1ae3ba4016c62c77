"""Draw docs/twin_grid.png: twin cases (PA, lateral, report) with measured findings beside the truth.

    .venv/bin/python benchmarks/twin_grid.py --out docs/twin_grid.png \
        --iu-reports ../shared/data/iu-xray-reports/NLMCXR_reports.tgz

Cases are chosen from seed 0 so that each row shows a different finding.
"""

from __future__ import annotations

import argparse

import numpy as np

from cxrgen.twin import twin_sample
from cxrgen.twin.grid import twin_grid
from cxrgen.twin.reports import twin_report

WANTED = ("effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule", "normal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/twin_grid.png")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iu-reports", help="IU archive: real sentences in the reports")
    args = p.parse_args()
    cases, reports, shown = [], [], set()
    for i in range(200):
        case = twin_sample(i, args.size, args.seed)
        key = next((k for k in WANTED if k in case.findings.present), "normal")
        if key in shown:
            continue
        shown.add(key)
        findings, impression = twin_report(case.findings, np.random.default_rng([args.seed, i, 11]), "train",
                                           args.iu_reports)
        cases.append(case)
        reports.append(f"FINDINGS: {findings} IMPRESSION: {impression}")
        if len(shown) == len(WANTED):
            break
    print(twin_grid(cases, reports, args.out))


if __name__ == "__main__":
    main()
