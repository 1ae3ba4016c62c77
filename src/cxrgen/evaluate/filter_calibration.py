"""Calibrate the quality filter: per-class operating points chosen on real held-out images.

The filter's fixed threshold (0.5) assumes a calibrated evaluator; the shipped one is not (real normal
images get P(No Finding) well below 0.5). ``calibrate_filter`` scores the evaluator's own held-out
``validate`` images (the file names in its folder's ``heldout_images.json``, never trained on) and picks,
per class, the cut point that maximises Youden's J (sensitivity + specificity - 1) or the lowest one
reaching a stated specificity, against the manifest labels the evaluator was trained with. The points go
to ``filter_operating_points.json`` beside the weights, which quality_filter.load_filter uses by default.

``filter_acceptance`` measures what a filter is worth: real held-out images with their own prompts should
be accepted, the same images with a contradicting prompt (normal <-> pneumonia) rejected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm.auto import tqdm

from cxrgen.data.images import load_image
from cxrgen.data.manifest import NEGATIVE, POSITIVE, read_manifest
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.quality_filter import (
    DEFAULT_THRESHOLD,
    OPERATING_POINTS_NAME,
    PromptConsistencyFilter,
    load_operating_points,
    prompt_expectations,
    weights_sha1,
)
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.train_ssl import HELDOUT_NAME

log = logging.getLogger(__name__)

METHODS = ("youden", "specificity")
NORMAL, PNEUMONIA = "No Finding", "Pneumonia"
#: Contradicting prompt when the image's source has no row of the opposite class.
FALLBACK_PROMPTS = {NORMAL: "Normal chest radiograph.", PNEUMONIA: "Pneumonia."}


def heldout_rows(manifests: Sequence[str | Path], split: str, evaluator: str | Path) -> pd.DataFrame:
    """Manifest rows of ``split`` whose image the evaluator's ``heldout_images.json`` lists under that split."""
    listing = Path(evaluator) / HELDOUT_NAME
    if not listing.is_file():
        raise DataError(f"{listing} not found: calibrate only an evaluator folder that lists its held-out images "
                        "(written by `cxrgen train-evaluator-ssl`)")
    heldout = json.loads(listing.read_text(encoding="utf-8"))
    frames = []
    for manifest in manifests:
        df = read_manifest(Path(manifest))
        df = df[(df["split"].astype(str) == split) & (df["image_path"].astype(str).str.len() > 0)].copy()
        base = Path(manifest).parent
        df["image_path"] = [p if Path(p).is_absolute() else str(base / p) for p in df["image_path"].astype(str)]
        if "source" not in df.columns:
            df["source"] = base.name
        listed = df["image_path"].map(lambda p: Path(p).name)
        keep = [name in set(heldout.get(src, {}).get(split, [])) for src, name in zip(df["source"], listed,
                                                                                       strict=True)]
        if not all(keep):
            log.warning("%s: %d %r row(s) not in the evaluator's held-out list are left out", manifest,
                        len(keep) - sum(keep), split)
        frames.append(df[keep])
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if rows.empty:
        raise DataError(f"no {split!r} rows of {list(manifests)} are among the evaluator's held-out images "
                        f"({listing}): pass the manifests it was trained with (--data)")
    return rows


@torch.no_grad()
def evaluator_probabilities(evaluator: CXREvaluator, paths: Sequence[str], batch_size: int = 32,
                            progress: bool = True) -> torch.Tensor:
    """Evaluator probabilities (N, C) of the image files, read at its own size."""
    evaluator.eval()
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc="scoring held-out images", disable=not progress):
        batch = torch.stack([load_image(p, evaluator.cfg.image) for p in paths[start:start + batch_size]])
        out.append(evaluator.probabilities(batch).cpu())
    return torch.cat(out).float()


def operating_point(probs: np.ndarray, labels: np.ndarray, method: str = "youden",
                    target_specificity: float = 0.9) -> dict:
    """Cut point c (positive when p >= c) of one class from certain labels (1 / 0), with its rates."""
    certain = (labels == POSITIVE) | (labels == NEGATIVE)
    y, p = (labels[certain] == POSITIVE).astype(int), probs[certain]
    if y.min(initial=1) == y.max(initial=0):
        raise DataError(f"{int(y.sum())} positive and {int(len(y) - y.sum())} negative labels: a cut point "
                        "needs both; add held-out images of both kinds")
    fpr, tpr, cuts = roc_curve(y, p)
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    elif method == "specificity":
        best = int(np.nonzero(fpr <= 1.0 - target_specificity)[0].max())  # most sensitive one reaching it
    else:
        raise ConfigError(f"method {method!r}: use one of {METHODS}")
    cut = float(np.clip(cuts[best], 1e-6, 1.0 - 1e-6))  # roc_curve's first cut is +inf
    return {"threshold": cut, "sensitivity": float(tpr[best]), "specificity": float(1.0 - fpr[best]),
            "auroc": float(roc_auc_score(y, p)), "positives": int(y.sum()), "negatives": int(len(y) - y.sum())}


def contradicting_prompts(rows: pd.DataFrame, seed: int = 0) -> list[str | None]:
    """Per row, a prompt of the opposite class (normal <-> pneumonia) from the same source; None if neither."""
    if NORMAL not in rows.columns or PNEUMONIA not in rows.columns:
        return [None] * len(rows)
    rng = np.random.default_rng(seed)
    out: list[str | None] = []
    for _, row in rows.iterrows():
        kind = NORMAL if row.get(NORMAL) == POSITIVE else PNEUMONIA if row.get(PNEUMONIA) == POSITIVE else None
        if kind is None:
            out.append(None)
            continue
        other = PNEUMONIA if kind == NORMAL else NORMAL
        pool = rows[(rows["source"] == row["source"]) & (rows[other] == POSITIVE)]["prompt"].astype(str)
        out.append(str(pool.iloc[int(rng.integers(len(pool)))]) if len(pool) else FALLBACK_PROMPTS[other])
    return out


def filter_acceptance(sample_filter: PromptConsistencyFilter, rows: pd.DataFrame, probs: torch.Tensor,
                      seed: int = 0) -> dict:
    """Acceptance of real images with their own prompts vs contradicting ones (rows both state something on)."""
    swapped = contradicting_prompts(rows, seed)
    own_ok, swap_ok, sources, kinds = [], [], [], []
    for i, (prompt, other) in enumerate(zip(rows["prompt"].astype(str), swapped, strict=True)):
        if other is None or not sample_filter.expectations(prompt) or not sample_filter.expectations(other):
            continue  # nothing to check on one side: always accepted, says nothing about the filter
        own_ok.append(bool(sample_filter.score(prompt, probs[i:i + 1])[0] <= 0))
        swap_ok.append(bool(sample_filter.score(other, probs[i:i + 1])[0] <= 0))
        sources.append(rows["source"].iloc[i])
        kinds.append("normal" if rows[NORMAL].iloc[i] == POSITIVE else "pneumonia")
    own, swap, src, kind = np.asarray(own_ok), np.asarray(swap_ok), np.asarray(sources), np.asarray(kinds)

    def rates(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        return {"images": n, "own_accepted": float(own[mask].mean()) if n else None,
                "swapped_accepted": float(swap[mask].mean()) if n else None}

    return {"filter": sample_filter.name, **rates(np.ones(len(own), bool)),
            "by_source": {s: rates(src == s) for s in sorted(set(sources))},
            "by_image": {k: rates(kind == k) for k in ("normal", "pneumonia")}, "skipped": len(rows) - len(own)}


def folder_acceptance(folder: str | Path, sample_filter: PromptConsistencyFilter, progress: bool = False) -> dict:
    """``filter_acceptance`` of the PNGs ``cxrgen generate`` wrote to ``folder``, labelled by their prompts."""
    paths = sorted(str(p) for p in Path(folder).glob("*.png"))
    if not paths:
        raise DataError(f"no PNG images in {folder}: give a `cxrgen generate --out` folder")
    prompts = [Image.open(p).text.get("prompt", "") for p in paths]
    stated = [prompt_expectations(p, (NORMAL, PNEUMONIA)) for p in prompts]
    rows = pd.DataFrame({"image_path": paths, "prompt": prompts, "source": "generated",
                         NORMAL: [e.get(NORMAL, np.nan) for e in stated],
                         PNEUMONIA: [e.get(PNEUMONIA, np.nan) for e in stated]})
    rows.loc[rows[NORMAL] == POSITIVE, PNEUMONIA] = np.nan  # one kind per image: what the prompt states present
    probs = evaluator_probabilities(sample_filter.evaluator, paths, progress=progress)
    return filter_acceptance(sample_filter, rows, probs)


def calibrate_filter(manifests: Sequence[str | Path], evaluator: str | Path | None = None, split: str = "validate",
                     method: str = "youden", target_specificity: float = 0.9, test_split: str | None = "test",
                     write: bool = True, progress: bool = True) -> dict:
    """Per-class operating points on the evaluator's held-out ``split``; with ``test_split``, own vs swapped
    acceptance there at the fixed 0.5 and the calibrated points. Written to the evaluator folder (``write``)."""
    folder = Path(evaluator or DEFAULT_EVALUATOR)
    model = CXREvaluator.from_pretrained(folder)
    rows = heldout_rows(manifests, split, folder)
    missing = [c for c in model.class_names if c not in rows.columns]
    if missing:
        raise DataError(f"manifests lack the evaluator's label columns {missing}")
    probs = evaluator_probabilities(model, list(rows["image_path"]), progress=progress).numpy()
    classes = {c: operating_point(probs[:, j], rows[c].to_numpy(dtype=np.float64), method, target_specificity)
               for j, c in enumerate(model.class_names)}
    result = {"method": method, **({"target_specificity": target_specificity} if method == "specificity" else {}),
              "split": split, "images": len(rows), "by_source": rows["source"].value_counts().to_dict(),
              "evaluator_weights_sha1": weights_sha1(folder), "classes": classes}
    if test_split:
        test = heldout_rows(manifests, test_split, folder)
        test_probs = evaluator_probabilities(model, list(test["image_path"]), progress=progress)
        points = {c: v["threshold"] for c, v in classes.items()}
        result["test_acceptance"] = {
            "split": test_split,
            "fixed": filter_acceptance(PromptConsistencyFilter(model, DEFAULT_THRESHOLD), test, test_probs),
            "calibrated": filter_acceptance(PromptConsistencyFilter(model, operating_points=points), test,
                                            test_probs)}
    if write:
        (folder / OPERATING_POINTS_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log.info("operating points %s written to %s", load_operating_points(folder), folder / OPERATING_POINTS_NAME)
    return result
