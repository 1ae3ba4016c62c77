"""Write a twin set: per case a PA PNG, a lateral PNG and a report text, plus one manifest CSV.

The manifest (``twin.csv``) has one row per study: the study id linking both views, the split
(drawn from the seed), the report sections, the truth (findings, CTR) and the variation.
``cxrgen prepare twin DIR`` turns it into a regular manifest with one row per image.
Test-split reports use the held-out wordings (templates and IU reports), the others the training ones;
with ``validate_wording="dev"`` the validate split uses the third, "dev" wordings (templates only): a split
for choosing between models on unseen wordings without the test's (the images do not change).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png
from cxrgen.data.readers.twin import SITE_COLUMNS
from cxrgen.errors import ConfigError, DataError
from cxrgen.twin.case import TwinCase, twin_sample
from cxrgen.twin.reports import twin_report
from cxrgen.twin.volume import CTSource

log = logging.getLogger(__name__)

MANIFEST_NAME = "twin.csv"
INFO_NAME = "twin.json"
SPLIT_SHARES: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validate, test
VALIDATE_WORDINGS: tuple[str, ...] = ("train", "dev")  # the validate split's report wordings


def split_of(seed: int, index: int, shares: tuple[float, float, float] = SPLIT_SHARES) -> str:
    """The split of case ``index``: drawn from (seed, index), so it does not depend on n."""
    u = np.random.default_rng([seed, index, 7]).uniform()
    return "train" if u < shares[0] else "validate" if u < shares[0] + shares[1] else "test"


def case_row(case: TwinCase, index: int, seed: int) -> dict:
    """Manifest columns of one case except paths and report text (nodule sites empty without a nodule)."""
    sites = {c: None for c in SITE_COLUMNS}
    for view, values in case.nodule_sites.items():
        sites |= {f"nodule_{view}_{part}": round(v, 2) for part, v in zip(("col", "row", "radius"), values,
                                                                            strict=True)}
    return {"study_id": f"twin_{seed}_{index:06d}", "patient_id": f"twin_{seed}_{index:06d}",
            "split": split_of(seed, index), "ctr": round(case.ctr, 4),
            **case.findings.to_row(), **case.variation.to_row(), **sites}


def write_twin_set(n: int, size: int, out_dir: str | Path, seed: int = 0, iu_archive: str | Path | None = None,
                   source: CTSource | None = None, progress: bool = True, threads: int | None = 1,
                   validate_wording: str = "train") -> Path:
    """Render ``n`` cases into ``out_dir`` (images/, reports/, twin.csv, twin.json); return the CSV path.

    ``validate_wording``: "train" (the training wordings) or "dev" (a third wording set, for model selection).

    ``threads``: torch threads while rendering (restored after; None leaves them): the renderer is
    memory-bound, and one thread was fastest on a shared 2-core machine (docs/twin.md).
    """
    if n <= 0:
        raise ConfigError(f"n={n}: give a positive number of twin cases")
    if not 32 <= size <= 1024:
        raise ConfigError(f"size={size}: give an image side between 32 and 1024 pixels")
    if validate_wording not in VALIDATE_WORDINGS:
        raise ConfigError(f"validate_wording={validate_wording!r}: use one of {list(VALIDATE_WORDINGS)}")
    if iu_archive is not None and not Path(iu_archive).is_file():
        raise DataError(f"IU report archive {iu_archive} does not exist; give NLMCXR_reports.tgz or leave it out")
    out = Path(out_dir)
    for sub in ("images", "reports"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = [_write_case(i, size, out, seed, iu_archive, source, validate_wording)
                for i in tqdm(range(n), desc="twin cases", disable=not progress)]
    finally:
        torch.set_num_threads(before)
    path = out / MANIFEST_NAME
    pd.DataFrame(rows).to_csv(path, index=False)
    wordings = {"train": "train", "validate": validate_wording, "test": "heldout"}
    (out / INFO_NAME).write_text(json.dumps({"n": n, "size": size, "seed": seed, "iu_archive": bool(iu_archive),
                                             "wordings": wordings,
                                             "views": {"pa": "patient's right on the image's left",
                                                       "lateral": "left lateral, anterior on the image's left"}},
                                            indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d twin cases (%dx%d) and %s", n, size, size, path)
    return path


def _write_case(i: int, size: int, out: Path, seed: int, iu_archive: str | Path | None,
                source: CTSource | None, validate_wording: str = "train") -> dict:
    """Render, save and describe case ``i``: its manifest row."""
    case = twin_sample(i, size, seed, source)
    row = case_row(case, i, seed)
    wording = {"test": "heldout", "validate": validate_wording}.get(row["split"], "train")
    findings, impression = twin_report(case.findings, np.random.default_rng([seed, i, 11]), wording,
                                       str(iu_archive) if iu_archive else None)
    stem = row["study_id"]
    unit = ImageConfig(size=size, low=0.0, high=1.0)
    for view in ("pa", "lateral"):
        row[f"{view}_path"] = f"images/{stem}_{view}.png"
        save_png(case.view(view), out / row[f"{view}_path"], unit, bits=8)
    row["report_path"] = f"reports/{stem}.txt"
    (out / row["report_path"]).write_text(f"FINDINGS: {findings}\nIMPRESSION: {impression}\n", encoding="utf-8")
    return {**row, "wording": wording, "findings": findings, "impression": impression}
