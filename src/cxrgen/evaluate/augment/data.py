"""The real side of the augmentation study: the task's rows and labels, matched draws, leak checks.

A task is multi-class (one categorical column, one-hot targets) or multi-label (CheXpert columns,
binary targets); both become a (N, C) 0/1 target matrix. The test split must share no patient or
image with the classifier's training split (checked with the manifest's link columns) nor with the
generative model's training rows (read from its training record, or given).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config.augment import AugmentStudyConfig
from cxrgen.data.manifest import read_manifest
from cxrgen.data.splits import LINK_COLUMNS, check_split_leaks
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.training_set import training_record

log = logging.getLogger(__name__)

PATH = "path"  # resolved image path column added to the task's rows
BINARY = (0.0, 1.0)
MODEL_TRAIN_SPLIT = "train"  # the split of given --model-train-manifest files the generative model trained on


@dataclass
class Task:
    """Rows (with a resolved ``path``) and (N, C) 0/1 targets of the train and test splits."""

    classes: tuple[str, ...]
    multiclass: bool
    train: pd.DataFrame
    train_targets: np.ndarray
    test: pd.DataFrame
    test_targets: np.ndarray
    notes: list[str] = field(default_factory=list)


def resolve_paths(values: pd.Series, base: Path) -> list[str]:
    """Image paths as strings; relative ones joined to ``base``."""
    return [str(p if Path(p).is_absolute() else base / p) for p in values.astype(str)]


def label_targets(df: pd.DataFrame, cfg: AugmentStudyConfig, classes: Sequence[str],
                  notes: list[str], what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with a usable label and their (N, C) 0/1 targets; dropped rows are counted in ``notes``."""
    if cfg.multiclass:
        values = df[cfg.label_column].astype(str).str.strip()
        keep = values.isin(list(classes)).to_numpy()
        targets = (values.to_numpy()[:, None] == np.asarray(classes, dtype=object)[None, :]).astype(np.float32)
    else:
        matrix = df[list(cfg.label_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isin(matrix, BINARY).all(axis=1)
        targets = np.nan_to_num(matrix).astype(np.float32)
    if not keep.all():
        note = f"{what}: {int((~keep).sum())} of {len(df)} rows left out (label not one of {list(classes)}" + (
            ")" if cfg.multiclass else " as 1 / 0: missing or uncertain)")
        notes.append(note)
        log.info(note)
    return df[keep].reset_index(drop=True), targets[keep]


def _task_classes(train: pd.DataFrame, cfg: AugmentStudyConfig) -> tuple[str, ...]:
    if not cfg.multiclass:
        return tuple(cfg.label_columns)
    if cfg.classes:
        return tuple(cfg.classes)
    return tuple(sorted(train[cfg.label_column].astype(str).str.strip().unique()))


def read_task(cfg: AugmentStudyConfig) -> Task:
    """The train and test rows of ``cfg.manifest`` with their targets; errors name what is missing."""
    manifest = Path(cfg.manifest)
    df = read_manifest(manifest)
    label_columns = [cfg.label_column] if cfg.multiclass else list(cfg.label_columns)
    missing = [c for c in ("image_path", "split", *label_columns) if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"manifest {manifest} lacks columns {missing}: build it with `cxrgen prepare` "
                                  "and name its label column(s) with --label-column / --label-columns")
    notes: list[str] = []
    if cfg.view is not None:
        df = df[df["view"].astype(str).str.upper() == cfg.view.upper()]
        notes.append(f"only {cfg.view} rows ({len(df)})")
    df = df.assign(**{PATH: resolve_paths(df["image_path"], Path(cfg.image_root or manifest.parent))})
    split = df["split"].astype(str)
    train_rows, test_rows = df[split == cfg.train_split], df[split == cfg.test_split]
    classes = _task_classes(train_rows, cfg)
    if len(classes) < 2 and cfg.multiclass:
        raise DataError(f"the {cfg.train_split!r} rows have classes {list(classes)}: a classifier needs two or more")
    train, train_targets = label_targets(train_rows, cfg, classes, notes, cfg.train_split)
    test, test_targets = label_targets(test_rows, cfg, classes, notes, cfg.test_split)
    for name, targets in ((cfg.train_split, train_targets), (cfg.test_split, test_targets)):
        positives = targets.sum(axis=0)
        lacking = [c for c, p in zip(classes, positives, strict=True) if p == 0 or p == len(targets)]
        if len(targets) == 0 or lacking:
            raise DataError(f"split {name!r} of {manifest} has {len(targets)} usable rows and classes {lacking} "
                            "without both positives and negatives: AUROC needs both; check the split and labels")
    check_patient_split(train, test, cfg)
    return Task(classes, cfg.multiclass, train, train_targets, test, test_targets, notes)


def check_patient_split(train: pd.DataFrame, test: pd.DataFrame, cfg: AugmentStudyConfig) -> None:
    """DataError when a patient (or an identical image) is in both the train and the test rows."""
    links = [c for c in LINK_COLUMNS if c in train.columns and c in test.columns]
    if "patient_id" not in links:
        raise MissingColumnsError("the manifest has no patient_id column: a patient-level test split cannot be "
                                  "checked; build the manifest with `cxrgen prepare`")
    both = pd.concat([train[links], test[links]], ignore_index=True)
    leaks = check_split_leaks(both, [cfg.train_split] * len(train) + [cfg.test_split] * len(test), links)
    if leaks:
        raise DataError(f"{leaks} patient(s) or image(s) are in both the {cfg.train_split!r} and {cfg.test_split!r} "
                        "rows: rebuild the split with `cxrgen prepare` (patient-level splits)")


def _generator_training_rows(cfg: AugmentStudyConfig, model: str | None) -> tuple[pd.DataFrame, str] | None:
    """Link columns of the generative model's training rows, and where the list came from (None: unknown)."""
    if cfg.model_train_manifests:
        manifests, split, source = [Path(m) for m in cfg.model_train_manifests], MODEL_TRAIN_SPLIT, "given"
    elif model is not None and (record := training_record(model)) is not None and record[0]:
        manifests, split = record
        source = f"{Path(model) / 'train_config.yaml'}"
    else:
        return None
    absent = [str(m) for m in manifests if not m.is_file()]
    if absent:
        raise ConfigError(f"the generative model's training manifests {absent} ({source}) are not here: give them "
                          "with --model-train-manifest (repeatable) so the test split can be checked as unseen")
    frames = []
    for m in manifests:
        rows = read_manifest(m)
        rows = rows[rows["split"].astype(str) == split]
        frames.append(rows[[c for c in ("source", *LINK_COLUMNS) if c in rows.columns]])
    return pd.concat(frames, ignore_index=True), ", ".join(str(m) for m in manifests)


def _keys(df: pd.DataFrame) -> tuple[set, set]:
    """(source, patient_id) pairs and image hashes of the rows (empty values left out)."""
    source = df["source"].astype(str) if "source" in df.columns else pd.Series([""] * len(df), index=df.index)
    patients = set(zip(source, df["patient_id"].astype(str), strict=True)) if "patient_id" in df.columns else set()
    hashes = set(df["image_sha1"].astype(str)) if "image_sha1" in df.columns else set()
    return {p for p in patients if p[1] not in ("", "nan")}, hashes - {"", "nan", "None"}


def check_generator_unseen(test: pd.DataFrame, cfg: AugmentStudyConfig, model: str | None) -> str:
    """DataError when the generative model trained on a test patient or image; returns what was checked.

    With no model (a folder of images) and no ``model_train_manifests`` nothing can be checked: "unchecked".
    """
    found = _generator_training_rows(cfg, model)
    if found is None:
        if model is not None:
            raise ConfigError(f"the generative model {model} has no training record (train_config.yaml naming its "
                              "manifests): give --model-train-manifest so the test split can be checked as unseen")
        log.warning("synthetic images from a folder: cannot check that their generator never saw the test "
                    "patients; give --model-train-manifest to check")
        return "unchecked"
    seen, where = found
    seen_patients, seen_hashes = _keys(seen)
    test_patients, test_hashes = _keys(test)
    overlap = len(test_patients & seen_patients) + len(test_hashes & seen_hashes)
    if overlap:
        raise DataError(f"the generative model was trained on {overlap} of the test split's patients or images "
                        f"({where}): use a test split the model never saw")
    return f"no test patient or image among the generative model's training rows ({where})"


def draw_rows(targets: np.ndarray, n: int, multiclass: bool, rng: np.random.Generator) -> np.ndarray:
    """Row indices: ``n`` per class (multi-class) or ``n`` in all (multi-label), without replacement, sorted."""
    pools = [np.flatnonzero(targets[:, c] == 1) for c in range(targets.shape[1])] if multiclass else \
        [np.arange(targets.shape[0])]
    short = [len(p) for p in pools if len(p) < n]
    if short:
        raise DataError(f"asked for {n} images {'per class' if multiclass else 'in all'}, but a pool has only "
                        f"{min(short)}: lower --n-real / --n-synthetic or add images")
    return np.sort(np.concatenate([rng.choice(p, size=n, replace=False) for p in pools]))
