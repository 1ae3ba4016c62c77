"""``cxrgen prepare``: read a collection, label, build prompts, split by patient, write a manifest."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from cxrgen.config import DataConfig, save_config
from cxrgen.data.images import file_sha1, read_image
from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import CHEXPERT_LABELS, ReadSummary, new_manifest, write_manifest
from cxrgen.data.prompts import filter_prompts, select_prompt
from cxrgen.data.readers import READERS
from cxrgen.data.splits import assign_splits, duplicate_groups
from cxrgen.errors import ConfigError, DataError, ImageReadError

log = logging.getLogger(__name__)


def check_images(df: pd.DataFrame, summary: ReadSummary) -> pd.DataFrame:
    """Decode every image once; drop (and count) missing or unreadable files; add ``image_sha1``."""
    keep, hashes = [], []
    for path in tqdm(df["image_path"], desc="checking images", disable=len(df) < 200):
        try:
            read_image(path)
        except ImageReadError as exc:
            log.warning("%s", exc)
            summary.drop("image file missing" if not Path(path).exists() else "image unreadable")
            keep.append(False)
            continue
        keep.append(True)
        hashes.append(file_sha1(path))
    df = df[keep].copy()
    df["image_sha1"] = hashes
    return df


def add_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Label each row's findings and impression with the cxrgen labeler (for unlabelled sources)."""
    texts = [" ".join(t for t in (f, i) if t) or r
             for f, i, r in zip(df["findings"], df["impression"], df["report"], strict=True)]
    rows = [label_report(t).as_row() if t.strip() else {}
            for t in tqdm(texts, desc="labelling", disable=len(texts) < 500)]
    labels = pd.DataFrame(rows, index=df.index, columns=list(CHEXPERT_LABELS), dtype="float64")
    return df.drop(columns=[c for c in CHEXPERT_LABELS if c in df.columns]).join(labels)


def add_prompts(df: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Fill empty prompts from the report sections (impression first, per the config)."""
    df = df.copy()
    if "prompt" not in df.columns:
        df["prompt"] = ""
    df["prompt"] = df["prompt"].fillna("").astype(str)
    empty = df["prompt"].str.strip() == ""
    df.loc[empty, "prompt"] = [
        select_prompt({"findings": f, "impression": i}, cfg.prompt)
        for f, i in zip(df.loc[empty, "findings"].fillna(""), df.loc[empty, "impression"].fillna(""), strict=True)
    ]
    return df


def build_manifest(source: str, path: str | Path, cfg: DataConfig,
                   columns: dict[str, str] | None = None) -> tuple[pd.DataFrame, ReadSummary]:
    """Read ``source`` at ``path`` into a finished manifest and the summary of what was dropped."""
    if source not in READERS:
        raise ConfigError(f"unknown source {source!r}; choose one of {sorted(READERS)}")
    summary = ReadSummary(source=source)
    options = {"columns": columns} if source == "csv" else {}
    if columns and source != "csv":
        raise ConfigError("--column applies to the generic CSV reader only (source 'csv')")
    collection = READERS[source](path, cfg, summary, **options)
    df = new_manifest(collection.rows.to_dict("records"))
    if collection.has_images:  # absolute, so the manifest works from any working directory
        df["image_path"] = [os.path.abspath(p) for p in df["image_path"]]
    if cfg.views:
        wanted = {v.upper() for v in cfg.views}
        other = ~df["view"].str.upper().isin(wanted)
        if other.any():
            summary.drop(f"view not in {sorted(wanted)}", int(other.sum()))
        df = df[~other]
    if collection.has_images and len(df):
        df = check_images(df, summary)
    if not collection.labelled and len(df):
        df = add_labels(df)
    df = filter_prompts(add_prompts(df, cfg), cfg.prompt, summary)
    link = ("patient_id", "image_sha1") if "image_sha1" in df.columns else ("patient_id",)
    split_cfg = cfg.split
    if not (collection.official_split and split_cfg.keep_source_split):
        df["split"] = ""
    if len(df):
        df["split"] = assign_splits(df.reset_index(drop=True), split_cfg, link_columns=link).to_numpy()
    if "image_sha1" in df.columns:
        groups = duplicate_groups(df.reset_index(drop=True), column="image_sha1")
        if groups:
            summary.notes.append(
                f"{len(groups)} duplicate image group(s) ({sum(map(len, groups))} rows): "
                "each kept within one split")
    df = new_manifest(df.to_dict("records"))
    return df, summary.fill_from(df)


def prepare(source: str, path: str | Path, out: str | Path, cfg: DataConfig | None = None,
            fmt: str = "parquet", columns: dict[str, str] | None = None) -> ReadSummary:
    """Build the manifest and write ``manifest.{fmt}``, ``summary.json`` and ``data_config.yaml``."""
    cfg = cfg or DataConfig()
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"format {fmt!r}: use parquet or csv")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {out} ({exc}); choose a writable --out") from exc
    df, summary = build_manifest(source, path, cfg, columns)
    write_manifest(df, out / f"manifest.{fmt}")
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    save_config(cfg, out / "data_config.yaml")
    log.info("wrote %d rows to %s", len(df), out)
    return summary
