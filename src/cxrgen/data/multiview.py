"""Multi-view data for CoDi XR: (frontal, lateral, report, truth) triplets and the report corpora.

Two sources of triplets, one table layout (one row per study; ``TRIPLET_COLUMNS`` first):

* the CT twin (``cxrgen twin``): PA + lateral DRRs of the same chest with findings known in 3D. Its
  splits are held-out *cases*; the ``test`` split also uses held-out *wordings* (report sentences
  from templates and IU reports never used in training), ``validate`` the training wordings.
* the adult set (covid-cxr-256): 50 lateral views, of which about 40 have a frontal view of the same
  patient on the same day (``offset_days``); the report is the imaging sentences of the clinical
  notes. Split by a hash of the patient id, so a patient's studies stay together.

``MultiviewDataset`` holds the images in memory (small sets: 2,000 twin pairs at 64 px are 65 MB)
and yields ``{"frontal": (1, S, S), "lateral": (1, S, S), "report": str, "index": int}`` with pixels
in [-1, 1]; ``index`` points into the table (truth columns for the twin's measurers).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.labeler import split_sentences
from cxrgen.data.manifest import read_manifest
from cxrgen.data.readers.covid import imaging_sentences
from cxrgen.data.readers.twin import SITE_COLUMNS, TRUTH_COLUMNS, TWIN_MANIFEST
from cxrgen.errors import DataError

log = logging.getLogger(__name__)

#: The columns every triplet table has, in this order.
TRIPLET_COLUMNS: tuple[str, ...] = ("study_id", "source", "split", "wording", "frontal_path", "lateral_path", "report")
#: The splits, as the twin and the prepared manifests name them.
SPLITS: tuple[str, ...] = ("train", "validate", "test")
#: Adult-set views counted as frontal; "L" is the lateral.
FRONTAL_VIEWS = frozenset({"PA", "AP", "AP Supine"})
LATERAL_VIEW = "L"


def twin_report(findings: str, impression: str) -> str:
    """The report text of a twin study, as its report file and ``cxrgen prepare twin`` write it."""
    return f"FINDINGS: {findings}\nIMPRESSION: {impression}"


def read_twin_triplets(twin_dir: str | Path) -> pd.DataFrame:
    """One row per twin study: paths of both views, the report, the split, the wording and the truth; with the
    nodule sites (``SITE_COLUMNS``, pixels) and ``twin_size`` (the written images' side) where the set has them."""
    root = Path(twin_dir)
    table_path = root / TWIN_MANIFEST
    if not table_path.is_file():
        raise DataError(f"{table_path} does not exist; write a twin set with `cxrgen twin --n N --size S --out {root}`")
    table = pd.read_csv(table_path, keep_default_na=False)
    sites: dict = {}
    info = root / "twin.json"
    if set(SITE_COLUMNS) <= set(table.columns) and info.is_file():
        sites = {"twin_size": json.loads(info.read_text(encoding="utf-8"))["size"]}
    rows = []
    for rec in table.to_dict("records"):
        if sites:
            sites |= {c: rec[c] for c in SITE_COLUMNS}
        rows.append({"study_id": rec["study_id"], "source": "twin", "split": rec["split"],
                     "wording": rec.get("wording", ""), "frontal_path": str(root / rec["pa_path"]),
                     "lateral_path": str(root / rec["lateral_path"]),
                     "report": twin_report(rec["findings"], rec["impression"]),
                     **{c: rec.get(c, "") for c in TRUTH_COLUMNS if c != "wording"}, **sites})
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*TRIPLET_COLUMNS, *rows[0]]))) if rows else \
        pd.DataFrame(columns=list(TRIPLET_COLUMNS))


def hash_split(key: str, shares: tuple[int, int, int] = (8, 1, 1)) -> str:
    """A split drawn from a stable hash of ``key`` (train / validate / test in tenths by default)."""
    bucket = zlib.crc32(key.encode("utf-8")) % sum(shares)
    return "train" if bucket < shares[0] else "validate" if bucket < shares[0] + shares[1] else "test"


def clip_report(text: str, max_chars: int) -> str:
    """Whole sentences of ``text`` up to ``max_chars`` characters (at least the first sentence, cut)."""
    kept: list[str] = []
    for sentence in split_sentences(text):
        if sum(len(s) + 1 for s in kept) + len(sentence) > max_chars:
            break
        kept.append(sentence)
    return " ".join(kept) if kept else text[:max_chars]


def read_adult_pairs(root: str | Path, max_report_chars: int = 400) -> pd.DataFrame:
    """Same-day frontal + lateral pairs of one patient in the adult set (covid-cxr-256 ``metadata.csv``)."""
    root = Path(root)
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} does not exist; give the covid-cxr-256 folder of ../shared/data")
    meta = pd.read_csv(meta_path).dropna(subset=["offset_days"])
    lateral = meta[meta["view"] == LATERAL_VIEW]
    frontal = meta[meta["view"].isin(FRONTAL_VIEWS)].drop_duplicates(["patient_id", "offset_days"])
    pairs = lateral.merge(frontal, on=["patient_id", "offset_days"], suffixes=("_lat", "_fr"))
    rows = []
    for rec in pairs.drop_duplicates("image_lat").to_dict("records"):
        notes = rec["clinical_notes_lat"] if isinstance(rec["clinical_notes_lat"], str) else rec["clinical_notes_fr"]
        sentences = imaging_sentences(notes) if isinstance(notes, str) else []
        report = clip_report(" ".join(sentences), max_report_chars) if sentences else ""
        patient = str(rec["patient_id"])
        rows.append({"study_id": f"adult_{patient}_{int(rec['offset_days'])}", "source": "adult",
                     "split": hash_split(patient), "wording": "", "frontal_path": str(root / rec["image_fr"]),
                     "lateral_path": str(root / rec["image_lat"]), "report": report,
                     "finding": rec["finding_lat"]})
    log.info("adult set: %d same-day frontal + lateral pairs of %d patients", len(rows), pairs["patient_id"].nunique())
    return pd.DataFrame(rows, columns=[*TRIPLET_COLUMNS, "finding"])


def read_triplets(twin_dirs: Sequence[str | Path] = (), adult_root: str | Path | None = None,
                  max_report_chars: int = 400) -> pd.DataFrame:
    """All triplets of the given twin folders and (optionally) the adult set, in one table."""
    parts = [read_twin_triplets(d) for d in twin_dirs]
    if adult_root is not None:
        parts.append(read_adult_pairs(adult_root, max_report_chars))
    parts = [p for p in parts if len(p)]
    if not parts:
        raise DataError("no multi-view studies: give data.twin_dirs (folders from `cxrgen twin`) and/or "
                        "data.adult_root (../shared/data/covid-cxr-256)")
    return pd.concat(parts, ignore_index=True)


def report_corpus(triplets: pd.DataFrame | None = None, manifests: Iterable[str | Path] = (),
                  max_chars: int = 400) -> dict[str, list[str]]:
    """Report texts per split (train / validate / test): the triplets' reports and the manifests' ``report``.

    A manifest's rows are per image, so a study's report is taken once (by ``study_id``); texts are
    cut to whole sentences within ``max_chars``.
    """
    corpus: dict[str, list[str]] = {s: [] for s in SPLITS}
    tables = [triplets] if triplets is not None else []
    for path in manifests:
        table = read_manifest(path)
        if "report" not in table.columns:
            raise DataError(f"{path} has no report column; prepare it with `cxrgen prepare`")
        tables.append(table.drop_duplicates("study_id") if "study_id" in table.columns else table)
    for table in tables:
        for split, text in zip(table["split"], table["report"], strict=True):
            if isinstance(text, str) and text.strip() and split in corpus:
                corpus[split].append(clip_report(text.strip(), max_chars))
    return corpus


class MultiviewDataset(Dataset):
    """Triplets of one split held in memory: frontal (1, S, S), lateral (1, S, S) in [-1, 1], report."""

    def __init__(self, table: pd.DataFrame, image_size: int, progress: bool = False) -> None:
        if not len(table):
            raise DataError("MultiviewDataset got no studies; check the split and the data folders")
        self.table = table.reset_index(drop=True)
        cfg = ImageConfig(size=image_size)
        rows = tqdm(self.table.itertuples(), total=len(table), desc="multi-view images", disable=not progress)
        pairs = [(load_image(r.frontal_path, cfg), load_image(r.lateral_path, cfg)) for r in rows]
        self.frontal = torch.stack([f for f, _ in pairs])  # (N, 1, S, S)
        self.lateral = torch.stack([lat for _, lat in pairs])  # (N, 1, S, S)
        self.reports: list[str] = [str(t) for t in self.table["report"]]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        return {"frontal": self.frontal[i], "lateral": self.lateral[i], "report": self.reports[i], "index": i}


def split_table(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split (train / validate / test), index reset."""
    if split not in SPLITS:
        raise DataError(f"split={split!r}: use one of {list(SPLITS)}")
    return table[table["split"] == split].reset_index(drop=True)
