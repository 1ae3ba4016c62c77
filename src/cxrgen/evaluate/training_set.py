"""The images memorization compares against: the model's training images and real held-out images.

The training images come from ``--train-manifest``, else from the model's own training record
(``train_config.yaml``, written beside the weights by ``cxrgen train``: its manifests and split).
Without either, evaluation stops with an error: the reference manifest's train split is not what
the model saw, and a copy rate against it means nothing. A held-out image whose file content
(``image_sha1``) is also in the training set is not held out; such rows are left out of the
threshold calibration with a warning (kept in, they pull the threshold to 1 and the copy rate to 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from cxrgen.config import EvalConfig
from cxrgen.config.training import TRAIN_CONFIG_NAME as CONFIG_NAME
from cxrgen.data.images import file_sha1
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

SHA1_COLUMN = "image_sha1"


@dataclass(frozen=True)
class MemorizationSets:
    """Training images, held-out real images (overlap removed), where the training list came from."""

    train: list[Path]
    heldout: list[Path]
    source: str  # the training manifest(s), or the record that named them
    heldout_in_train: int  # held-out rows left out because their image is in the training set


def training_record(model: str | Path) -> tuple[list[Path], str] | None:
    """Manifests and split of the model's ``train_config.yaml`` (None when the folder has none)."""
    record = Path(model) / CONFIG_NAME
    if not record.is_file():
        return None
    data = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
    return [Path(m) for m in data.get("manifests") or []], str(data.get("split", "train"))


def _rows(manifest: Path, splits: Sequence[str] | None, image_root: str | None) -> list[tuple[Path, str | None]]:
    """(image path, image_sha1 or None) of a manifest's rows in ``splits`` (all rows when None)."""
    df = read_manifest(manifest)
    if splits is not None:
        df = df[df["split"].astype(str).isin(list(splits))]
    base = Path(image_root) if image_root is not None else manifest.parent
    sha1 = df[SHA1_COLUMN] if SHA1_COLUMN in df.columns else [None] * len(df)
    out = []
    for value, digest in zip(df["image_path"], sha1, strict=True):
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
        if text:
            path = Path(text) if Path(text).is_absolute() else base / text
            out.append((path, digest if isinstance(digest, str) and digest else None))
    return out


def _sha1(path: Path, recorded: str | None) -> str | None:
    if recorded:
        return recorded
    try:
        return file_sha1(path)
    except OSError:  # a missing file fails later, where images are read, with its own message
        return None


def _training_manifests(cfg: EvalConfig, model: str) -> tuple[list[Path], str, str]:
    """The training manifests, their split and a description of where they came from."""
    if cfg.train_manifest:
        return [Path(cfg.train_manifest)], cfg.train_split, cfg.train_manifest
    record = training_record(model)
    if record is None or not record[0]:
        raise ConfigError(f"memorization needs the model's training images, and {model} has no training record "
                          f"naming them ({CONFIG_NAME} with manifests): give --train-manifest MANIFEST")
    manifests, split = record
    missing = [str(m) for m in manifests if not m.is_file()]
    if missing:
        raise ConfigError(f"the training record {Path(model) / CONFIG_NAME} names manifests that are not here "
                          f"({missing}): give --train-manifest MANIFEST")
    return manifests, split, ", ".join(str(m) for m in manifests)


def memorization_sets(cfg: EvalConfig, model: str) -> MemorizationSets:
    """Training and held-out images for memorization (ConfigError when the training images are unknown)."""
    manifests, split, source = _training_manifests(cfg, model)
    train = [row for m in manifests for row in _rows(m, (split,), cfg.image_root)]
    if not train and cfg.train_manifest:
        log.warning("no %r rows in %s: using all its rows as the training set", split, source)
        train = [row for m in manifests for row in _rows(m, None, cfg.image_root)]
    heldout = _rows(Path(cfg.real_manifest), cfg.heldout_splits, cfg.image_root)
    seen = {_sha1(path, digest) for path, digest in train} - {None}
    kept = [path for path, digest in heldout if _sha1(path, digest) not in seen]
    dropped = len(heldout) - len(kept)
    if dropped:
        log.warning("%d of %d held-out reference images are also in the training set (%s) by file content: they "
                    "are left out of the copy-threshold calibration; use a reference split the model never saw",
                    dropped, len(heldout), source)
    return MemorizationSets([p for p, _ in train], kept, source, dropped)
