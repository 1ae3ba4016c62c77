"""``codi.report_variants``: more training wordings of each twin case's report for the image trunks' text condition.

A twin case's findings are known, so its report can be written again: :func:`cxrgen.twin.reports.twin_report`
with another random draw, always from the TRAINING wordings (the phantom's train templates and, with an IU
archive, real sentences from the IU reports' train pool; never the held-out ones the ``test`` split is written
in). The image trunks then read one of the case's wordings per step, so they learn the findings, not three
templates' sentence vectors (caption augmentation). The report trunk and its codec keep the case's own report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrgen.data.multiview import twin_report as report_text
from cxrgen.errors import ConfigError, DataError
from cxrgen.twin.findings import TwinFindings
from cxrgen.twin.reports import twin_report

#: the truth columns a row needs to be written again (a `cxrgen twin` triplet table has them all)
NEEDED = ("effusion_side", "effusion_size", "pneumothorax_side", "pneumothorax_size", "consolidation_lobe",
          "cardiomegaly", "nodule_lobe", "nodule_mm")


def case_findings(row: Mapping[str, Any]) -> TwinFindings:
    """The twin findings of a triplet row (its truth columns)."""
    missing = [c for c in NEEDED if str(row.get(c, "")) == ""]
    if missing:
        raise DataError(f"study {row.get('study_id')!r} has no {missing} columns: codi.report_variants rewrites twin "
                        "reports from their truth; train on `cxrgen twin` folders or set codi.report_variants: 0")
    return TwinFindings.from_row({k: v for k, v in row.items() if str(v) != ""})


def report_variants(table: pd.DataFrame, k: int, seed: int = 0, archive: str | Path | None = None,
                    real_share: float = 0.5) -> list[list[str]]:
    """``k`` training-wording reports per row of a twin triplet ``table`` (same findings, other words), as the
    twin writes reports ("FINDINGS: ...\\nIMPRESSION: ..."); the same ``seed`` gives the same wordings."""
    if k < 1:
        raise ConfigError(f"report variants k={k}: give k >= 1")
    if archive is not None and not Path(archive).is_file():
        raise DataError(f"IU report archive {archive} does not exist: give NLMCXR_reports.tgz or leave it out "
                        "(the phantom's training templates only)")
    out = []
    for i, row in enumerate(table.to_dict("records")):
        findings = case_findings(row)
        rng = np.random.default_rng([seed, i, 29])
        out.append([report_text(*twin_report(findings, rng, "train", str(archive) if archive else None, real_share))
                    for _ in range(k)])
    return out


def pick_variant(context: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, V, S, D) sentence vectors of V wordings per sample -> (B, S, D): one wording per sample, drawn
    uniformly; (B, S, D) is returned as it is."""
    if context.dim() != 4:
        return context
    pick = torch.randint(0, context.shape[1], (context.shape[0],), generator=generator)
    return context[torch.arange(context.shape[0]), pick]
