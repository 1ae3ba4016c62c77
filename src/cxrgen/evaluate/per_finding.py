"""Per-finding FID (CheXGenBench's long-tail view): generated images of prompts with finding X against
real images labelled X, for every finding the prompts mention as present.

Takes features and label matrices only. Labels follow the manifest convention (1 positive, 0 negative,
-1 uncertain, NaN unmentioned); only positives (1) count. Each finding reports its sample sizes,
since most findings have few images and their FID is then biased and noisy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import CHEXPERT_LABELS, POSITIVE
from cxrgen.errors import DataError
from cxrgen.evaluate.fid import fid_from_features

log = logging.getLogger(__name__)

MIN_PER_FINDING = 2  # a covariance needs two samples; far more are needed for a stable value


def prompt_findings(prompts: Sequence[str]) -> np.ndarray:
    """Labeler labels (P, 14) of each prompt over the CheXpert observations (NaN where not mentioned)."""
    rows = [label_report(text).as_row() for text in prompts]
    return np.array([[row[name] for name in CHEXPERT_LABELS] for row in rows], dtype=np.float64)


def _fid_or_none(real: torch.Tensor, generated: torch.Tensor) -> float | None:
    try:
        return fid_from_features(real, generated)
    except DataError as exc:
        log.warning("per-finding FID is None: %s", exc)
        return None


def fid_per_finding(real_features: dict[str, torch.Tensor], real_labels: np.ndarray,
                    gen_features: dict[str, torch.Tensor], gen_labels: np.ndarray,
                    names: Sequence[str] = CHEXPERT_LABELS) -> dict[str, dict]:
    """For each finding positive in some generated row: sample sizes and FID per feature space (None if too few).

    ``real_features`` / ``gen_features`` map an extractor name to (N, F) / (M, F); labels are (N, C) / (M, C)
    with columns ``names``.
    """
    if real_labels.shape[1] != len(names) or gen_labels.shape[1] != len(names):
        raise DataError(f"label matrices have {real_labels.shape[1]} and {gen_labels.shape[1]} columns "
                        f"for {len(names)} findings")
    out: dict[str, dict] = {}
    for c, name in enumerate(names):
        gen_rows = np.flatnonzero(gen_labels[:, c] == POSITIVE)
        if gen_rows.size == 0:
            continue
        real_rows = np.flatnonzero(real_labels[:, c] == POSITIVE)
        entry: dict = {"n_generated": int(gen_rows.size), "n_real": int(real_rows.size), "fid": {}}
        enough = min(gen_rows.size, real_rows.size) >= MIN_PER_FINDING
        if not enough:
            entry["note"] = f"FID needs at least {MIN_PER_FINDING} generated and {MIN_PER_FINDING} real images"
        for space, gen_f in gen_features.items():
            entry["fid"][space] = _fid_or_none(real_features[space][real_rows], gen_f[gen_rows]) if enough else None
        out[name] = entry
    log.info("per-finding FID for %d findings: %s", len(out), {k: (v["n_generated"], v["n_real"])
                                                             for k, v in out.items()})
    return out
