"""The real-data block of ``cxrgen evaluate-multiview --adult ROOT``: the adult set (covid-cxr-256).

**Realism per view** (frontal, lateral). The adult set's patients are cut into two halves by a hash of the
patient id. Half A's images *that have imaging sentences* give the prompts: report -> view generates one image
from each (``n`` at most); half B's images of the view (all of them) are the reference. Every row is a set of
the same size as the generated one, scored against the same reference, so the small-sample bias of FID is
the same in every row of a table:

* ``real_other_half``: the real images of half A whose reports were the prompts (the floor: real vs real);
* ``generated``: the model's report -> view images;
* ``twin_drr``: the twin's DRRs of that view (what a twin-only distribution costs on real images);
* ``noise``: uniform noise images (known bad: every score must rank it below the floor).

Scores: FID_cxr, KID and PRDC (k = 5) in the feature space of ``cxrgen evaluate``'s evaluator (the shipped
224 px cxrgen-evaluator unless another is given) and SWD on the pixels; C2ST is left out (a CNN trained per
row and fold). All images are read at the model's size (resized and centre-cropped, never flipped).

**Frontal -> report** on held-out adult notes: the frontal images of the ``validate`` / ``test`` patients
(the split of :func:`~cxrgen.data.multiview.hash_split`, as the adult pairs are split) that have imaging
sentences, one image per (patient, note); the generated report against the note's imaging sentences:
BLEU-1..4, ROUGE-L and the labeler's agreement with the note's reading; beside it the same scores against other
images' notes (shuffled, the floor), the held-out notes themselves given as another image's report
(``other_notes``: what a report that ignores the image scores) and, with the aligned encoders, the retrieval
baseline (the nearest report of the training patients' notes in the aligned space; scored also for a model
that does not serve frontal -> report).
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.multiview import FRONTAL_VIEWS, LATERAL_VIEW, clip_report, hash_split
from cxrgen.data.readers.covid import imaging_sentences
from cxrgen.errors import DataError, MissingColumnsError
from cxrgen.evaluate.extractors import FeatureExtractor, extract_features
from cxrgen.evaluate.fid import fid_from_features, kid_from_features
from cxrgen.evaluate.image_pairs import NotEnoughImagesError
from cxrgen.evaluate.prdc import DEFAULT_K, prdc
from cxrgen.evaluate.swd import swd

log = logging.getLogger(__name__)

ADULT_VIEWS: tuple[str, ...] = ("frontal", "lateral")
HELDOUT_SPLITS: tuple[str, ...] = ("validate", "test")
METADATA_COLUMNS: tuple[str, ...] = ("image", "patient_id", "view", "clinical_notes")
#: The rows of each realism table, in order (see the module docstring).
REALISM_ROWS: tuple[str, ...] = ("real_other_half", "generated", "twin_drr", "noise")
DEFAULT_ADULT_N = 100
ADULT_GRID_CASES = 8


def read_adult_views(root: str | Path, max_report_chars: int = 400) -> pd.DataFrame:
    """One row per adult image of a known view: ``path``, ``patient_id``, ``view`` (frontal | lateral),
    ``split`` (by patient), ``half`` (A | B, by patient) and ``report`` (imaging sentences; "" when none)."""
    root = Path(root)
    meta_path = root / "metadata.csv"
    if not root.is_dir():
        raise DataError(f"adult set folder {root} does not exist; give --adult the covid-cxr-256 folder "
                        "(../shared/data/covid-cxr-256) that holds metadata.csv and the images")
    if not meta_path.is_file():
        raise DataError(f"{meta_path} does not exist; give --adult the covid-cxr-256 folder (metadata.csv and the "
                        "images it names)")
    meta = pd.read_csv(meta_path)
    missing = [c for c in METADATA_COLUMNS if c not in meta.columns]
    if missing:
        raise MissingColumnsError(f"{meta_path} lacks the columns {missing}; it must be covid-cxr-256's metadata.csv")
    meta = meta.drop_duplicates("image").reset_index(drop=True)  # the source lists a few files under two patients
    meta["view_name"] = ["frontal" if v in FRONTAL_VIEWS else "lateral" if v == LATERAL_VIEW else ""
                         for v in meta["view"]]
    meta = meta[meta["view_name"] != ""]
    reports = [clip_report(" ".join(s), max_report_chars) if (s := imaging_sentences(n) if isinstance(n, str)
                                                               else []) else "" for n in meta["clinical_notes"]]
    meta = meta.assign(report=reports)
    if "offset_days" in meta.columns:  # a row without notes takes a same-day note of the same patient
        same_day = meta[meta["report"] != ""].drop_duplicates(["patient_id", "offset_days"])
        fill = {(p, d): r for p, d, r in zip(same_day["patient_id"], same_day["offset_days"], same_day["report"],
                                             strict=True)}
        meta["report"] = [r or fill.get((p, d), "") for p, d, r in zip(meta["patient_id"], meta["offset_days"],
                                                                        meta["report"], strict=True)]
    patients = meta["patient_id"].astype(str)
    table = pd.DataFrame({
        "path": [str(root / p) for p in meta["image"]], "patient_id": patients, "view": meta["view_name"],
        "split": [hash_split(p) for p in patients],
        "half": ["A" if zlib.crc32(f"half:{p}".encode()) % 2 == 0 else "B" for p in patients],
        "report": meta["report"]})
    if not len(table):
        raise DataError(f"{meta_path} has no frontal ({sorted(FRONTAL_VIEWS)}) or lateral ({LATERAL_VIEW!r}) rows")
    return table.sort_values("path").reset_index(drop=True)


def load_adult_images(paths: list[str], size: int) -> torch.Tensor:
    """Images (N, 1, size, size) in [-1, 1], resized and centre-cropped (never flipped)."""
    cfg = ImageConfig(size=size)
    if not paths:
        return torch.zeros(0, 1, size, size)
    return torch.stack([load_image(p, cfg) for p in paths])


def noise_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Known-bad images: uniform noise (n, 1, size, size) in [-1, 1], seeded."""
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _features(extractor: FeatureExtractor, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return extract_features(extractor, (images[i:i + batch] for i in range(0, images.shape[0], batch)), False)


def realism_table(extractor: FeatureExtractor, reference: torch.Tensor, rows: dict[str, torch.Tensor],
                  seed: int = 0, kid_subsets: int = 100, prdc_k: int = DEFAULT_K) -> dict[str, dict[str, Any]]:
    """FID, KID and PRDC in ``extractor``'s space and pixel SWD of each row's images against ``reference``;
    a score a row has too few images for is None."""
    ref_f = _features(extractor, reference)
    out: dict[str, dict[str, Any]] = {}
    for name, images in rows.items():
        feats = _features(extractor, images)
        row: dict[str, Any] = {"n": int(images.shape[0]), "n_reference": int(reference.shape[0])}
        try:
            row["fid"] = fid_from_features(ref_f, feats)
        except DataError as exc:
            log.warning("adult FID (%s) is None: %s", name, exc)
            row["fid"] = None
        try:
            row["kid"], row["kid_std"] = kid_from_features(ref_f, feats, kid_subsets, min(len(ref_f), len(feats)),
                                                           rng=np.random.default_rng(seed))
        except DataError as exc:
            row["kid"], row["kid_std"] = None, None
            log.warning("adult KID (%s) is None: %s", name, exc)
        try:
            row.update({k: v for k, v in prdc(ref_f, feats, prdc_k).items() if k in ("precision", "recall",
                                                                                     "density", "coverage")})
        except NotEnoughImagesError as exc:
            row.update(precision=None, recall=None, density=None, coverage=None)
            log.warning("adult PRDC (%s) is None: %s", name, exc)
        try:
            row["swd"] = swd(reference, images, generator=torch.Generator().manual_seed(seed))["mean"]
        except NotEnoughImagesError as exc:
            row["swd"] = None
            log.warning("adult SWD (%s) is None: %s", name, exc)
        out[name] = row
    return out


def adult_realism(pipe: Any, table: pd.DataFrame, view: str, extractor: FeatureExtractor, n: int, batch: int,
                  seed: int, progress: bool, twin_views: torch.Tensor | None = None
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The realism table of one view (module docstring) and its images (``real_other_half``, ``generated``)."""
    from cxrgen.evaluate.multiview import run_modes

    size = int(pipe.image_size)
    rows = table[table["view"] == view]
    prompts = rows[(rows["half"] == "A") & (rows["report"] != "")].iloc[:n]
    reference = rows[rows["half"] == "B"]
    if len(prompts) < 2 or len(reference) < 2:
        raise DataError(f"the adult set has {len(prompts)} {view} images with notes in one half of its patients and "
                        f"{len(reference)} in the other; the realism scores need at least 2 of each")
    real_a = load_adult_images(list(prompts["path"]), size)
    sets: dict[str, torch.Tensor] = {"real_other_half": real_a}
    mode = f"report->{view}"
    if mode in set(getattr(pipe, "modes", ())):
        sets["generated"] = run_modes(pipe, {"report": list(prompts["report"])}, [view], len(prompts), batch, seed,
                                      progress)[view]
    if twin_views is not None and len(twin_views) >= 2:
        sets["twin_drr"] = twin_views[:len(prompts)]
    sets["noise"] = noise_images(len(prompts), size, seed)
    scores = realism_table(extractor, load_adult_images(list(reference["path"]), size), sets, seed=seed)
    block = {"n_generated": len(prompts), "n_reference": len(reference), "prompts": "imaging sentences of the "
             f"{view} images of half A's patients (their own notes, else a same-day note of the patient)",
             "rows": scores}
    return block, {k: v for k, v in sets.items() if k in ("real_other_half", "generated")}


def adult_report_rows(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """The held-out frontal rows for frontal -> report: validate / test patients with notes, one per
    (patient, note), at most ``n``."""
    rows = table[(table["view"] == "frontal") & table["split"].isin(HELDOUT_SPLITS) & (table["report"] != "")]
    return rows.drop_duplicates(["patient_id", "report"]).iloc[:n].reset_index(drop=True)


def adult_reports(pipe: Any, table: pd.DataFrame, n: int, batch: int, seed: int, progress: bool,
                  aligned: Any = None) -> dict[str, Any]:
    """Frontal -> report on held-out adult notes (module docstring): BLEU-1..4, ROUGE-L, the labeler's agreement;
    the model's scores only where it serves frontal -> report, the retrieval baseline whenever ``aligned`` is given."""
    from cxrgen.evaluate.multiview import run_modes
    from cxrgen.text.report_metrics import report_scores

    rows = adult_report_rows(table, n)
    if len(rows) < 2:
        raise DataError(f"the adult set has {len(rows)} held-out frontal images with imaging sentences in their "
                        "notes; frontal -> report needs at least 2")
    references = list(rows["report"])
    frontal = load_adult_images(list(rows["path"]), int(pipe.image_size))
    half = len(references) // 2  # each image paired with the note half the list away (mostly another patient's)
    shuffled = references[half:] + references[:half]
    out: dict[str, Any] = {"n": len(rows), "patients": int(rows["patient_id"].nunique()),
                           "splits": list(HELDOUT_SPLITS), "other_notes": report_scores(shuffled, references)}
    if "frontal->report" in set(getattr(pipe, "modes", ())):
        generated = run_modes(pipe, {"frontal": frontal}, ["report"], len(rows), batch, seed, progress)["report"]
        out.update(report_scores(generated, references))
        out["shuffled_notes"] = report_scores(generated, shuffled)
        out["examples"] = [{"reference": r, "generated": g} for r, g in zip(references[:3], generated[:3],
                                                                           strict=False)]
    if aligned is not None:
        gallery = sorted(set(table.loc[(table["split"] == "train") & (table["report"] != ""), "report"]))
        side = int(aligned.encoders.config.image_size)
        retrieved = aligned.retrieve_reports(F.interpolate(frontal, size=(side, side), mode="area"), "frontal",
                                             gallery)
        out["retrieval_baseline"] = {**report_scores(retrieved, references), "gallery": len(gallery)}
    return out


def score_adult(pipe: Any, table: pd.DataFrame, extractor: FeatureExtractor, n: int = DEFAULT_ADULT_N,
                batch: int = 16, seed: int = 0, progress: bool = True, aligned: Any = None,
                twin_views: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``real_data`` block (realism per view, frontal -> report) and the images of its grid.

    ``table``: :func:`read_adult_views`; ``twin_views``: the twin's DRRs per view at the model's size (a
    reference row); ``n``: at most this many generated images per view and held-out notes.
    """
    modes = set(getattr(pipe, "modes", ()))
    skipped = [m for m in ("report->frontal", "report->lateral", "frontal->report") if m not in modes]
    out: dict[str, Any] = {"image_size": int(pipe.image_size), "feature_space": extractor.name,
                           "n_images": {v: int((table["view"] == v).sum()) for v in ADULT_VIEWS}, "cpu_seconds": {}}
    grid: dict[str, torch.Tensor] = {}
    for view in ADULT_VIEWS:
        start = time.process_time()
        out[view], images = adult_realism(pipe, table, view, extractor, n, batch, seed, progress,
                                          (twin_views or {}).get(view))
        out["cpu_seconds"][view] = round(time.process_time() - start, 1)
        grid.update({f"adult {view} ({k})": v for k, v in images.items()})
    if "frontal->report" in modes or aligned is not None:
        start = time.process_time()
        out["frontal_to_report"] = adult_reports(pipe, table, n, batch, seed, progress, aligned)
        out["cpu_seconds"]["frontal_to_report"] = round(time.process_time() - start, 1)
    out["skipped"] = skipped
    return out, grid


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def adult_report_lines(block: dict[str, Any]) -> list[str]:
    """The ``real_data`` block as markdown (tables per view, frontal -> report) for ``report.md``."""
    lines = ["## Real data: the adult set (covid-cxr-256)", "",
             f"Images read at the model's {block['image_size']} px; feature space `{block['feature_space']}`; "
             f"CPU seconds {block['cpu_seconds']}.", ""]
    for view in ADULT_VIEWS:
        b = block[view]
        lines += [f"### {view}: {b['n_generated']} per row against {b['n_reference']} real reference images", "",
                  "| row | n | FID_cxr | KID | precision | recall | density | coverage | SWD |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {r['n']} | {_fmt(r['fid'], 2)} | {_fmt(r['kid'], 4)} | {_fmt(r['precision'])} | "
                  f"{_fmt(r['recall'])} | {_fmt(r['density'])} | {_fmt(r['coverage'])} | {_fmt(r['swd'], 1)} |"
                  for name in REALISM_ROWS if (r := b["rows"].get(name))]
        lines.append("")
    if "frontal_to_report" in block:
        r = block["frontal_to_report"]
        lines += [f"### frontal -> report on {r['n']} held-out notes ({r['patients']} patients of "
                  f"{'/'.join(r['splits'])})", "",
                  "| reports | BLEU-1 | BLEU-4 | ROUGE-L | finding agreement | finding F1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        named = [("generated", r), ("generated vs shuffled notes", r["shuffled_notes"])] if "shuffled_notes" in r \
            else []
        if "retrieval_baseline" in r:
            named.append((f"retrieval ({r['retrieval_baseline']['gallery']} training notes)", r["retrieval_baseline"]))
        named.append(("another held-out image's note (no model: the floor)", r["other_notes"]))
        lines += [f"| {name} | {_fmt(s.get('bleu1'), 1)} | {_fmt(s.get('bleu4'), 1)} | {_fmt(s.get('rougeL'))} | "
                  f"{_fmt(s.get('finding_agreement'))} | {_fmt(s.get('finding_f1'))} |" for name, s in named]
        lines.append("")
    if block["skipped"]:
        lines += [f"Modes this model does not serve (no adult score): {', '.join(block['skipped'])}.", ""]
    return lines
