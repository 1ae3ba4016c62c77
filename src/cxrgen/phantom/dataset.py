"""Write a phantom set to disk: 8-bit PNGs plus a manifest CSV the generic CSV reader accepts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig, PhantomConfig
from cxrgen.data.images import save_png
from cxrgen.errors import ConfigError
from cxrgen.phantom.findings import PhantomFindings, sample_findings
from cxrgen.phantom.render import render
from cxrgen.phantom.reports import report_for

log = logging.getLogger(__name__)

MANIFEST_NAME = "phantoms.csv"
IMAGE_DIR = "images"
#: CheXpert label columns filled from the truth (1 present, 0 absent), so prepare keeps them.
LABEL_COLUMNS: dict[str, str] = {"Pleural Effusion": "effusion", "Pneumothorax": "pneumothorax",
                                 "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                                 "No Finding": "normal"}


def _labels(f: PhantomFindings) -> dict[str, float]:
    present = {"effusion": f.effusion_side != "none", "pneumothorax": f.pneumothorax_side != "none",
               "cardiomegaly": f.cardiomegaly, "consolidation": f.consolidation_lobe != "none",
               "normal": f.is_normal}
    return {col: float(present[key]) for col, key in LABEL_COLUMNS.items()}


def phantom_sample(index: int, size: int, seed: int, cfg: PhantomConfig | None = None,
                   wording: str = "train") -> tuple[np.ndarray, PhantomFindings, str]:
    """Sample ``index`` of a set: its own generator from (seed, index), so it does not depend on n."""
    rng = np.random.default_rng([seed, index])
    findings = sample_findings(rng, cfg)
    image = render(findings, size, rng, cfg)
    return image, findings, report_for(findings, rng, wording=wording, cfg=cfg)


def write_phantom_set(n: int, size: int, out_dir: str | Path, seed: int = 0,
                      cfg: PhantomConfig | None = None, progress: bool = True) -> Path:
    """Render ``n`` phantoms into ``out_dir/images`` and write ``out_dir/phantoms.csv``; return the CSV path.

    Columns: image_path (relative to the CSV), patient_id, report, prompt, the ground truth
    (effusion_side, ..., consolidation_lobe) and CheXpert-named 0/1 labels.
    """
    if n <= 0:
        raise ConfigError(f"n={n}: give a positive number of phantoms")
    out_dir = Path(out_dir)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    unit = ImageConfig(size=size, low=0.0, high=1.0)  # phantoms are rendered in [0, 1]
    rows = []
    for i in tqdm(range(n), desc="phantoms", disable=not progress):
        image, findings, report = phantom_sample(i, size, seed, cfg)
        rel = f"{IMAGE_DIR}/phantom_{i:06d}.png"
        save_png(image, out_dir / rel, unit, bits=8)
        rows.append({"image_path": rel, "patient_id": f"phantom_{seed}_{i:06d}", "report": report,
                     "prompt": report, **findings.to_row(), **_labels(findings)})
    path = out_dir / MANIFEST_NAME
    pd.DataFrame(rows).to_csv(path, index=False)
    log.info("wrote %d phantoms (%dx%d) and %s", n, size, size, path)
    return path
