"""``cxrgen evaluate``: the evaluation protocol of RoentGen (Chambon et al. 2022), made a tool.

Generate K images per prompt (resumable, ``OUT/generated``), read them back, then score them:
FID / KID per feature extractor against the real reference set, MS-SSIM intra-prompt diversity
(and by prompt length), per-class AUROC of the cxrgen-evaluator against the prompts' labels
(beside the same on the prompts' real images: RoentGen table 3), memorization (nearest training
image in evaluator feature space, copy threshold calibrated on real held-out rows), compute, and
realism (C2ST and SWD against real held-out images, PRDC per feature space, per-finding FID).
Writes the metrics JSON and ``OUT/report.md`` with grids and plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cxrgen
from cxrgen.config import EvalConfig
from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import CHEXPERT_LABELS, read_manifest
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.compute_cost import (
    denoiser_cost,
    keep_throughput,
    measure_throughput,
)
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.extractors import (
    CXREvaluatorExtractor,
    FeatureExtractor,
    build_extractor,
)
from cxrgen.evaluate.report import write_report
from cxrgen.evaluate.suite import ImageSets, PromptTable, score
from cxrgen.evaluate.training_set import memorization_sets
from cxrgen.generate import PROMPT_COLUMN, generate_images, read_text_table
from cxrgen.outputs import check_writable
from cxrgen.pipeline import CXRPipeline, check_prompts, load_pipeline, model_label, resolve_model

log = logging.getLogger(__name__)

DEFAULT_EVALUATOR = Path(cxrgen.__file__).parent / "models" / "evaluator"
GENERATED_FOLDER = "generated"
METRICS_NAME = "metrics.json"
IMAGE_PATH_COLUMN = "image_path"
#: Top-level keys every metrics JSON has (issue 6); more may follow.
RESULT_KEYS = ("fid", "kid", "ms_ssim", "auroc", "auroc_real", "memorization", "compute", "n_generated", "n_real",
               "c2st", "swd", "prdc", "fid_per_finding", "reid")


# --------------------------------------------------------------------------------------------
# Reading tables and images
# --------------------------------------------------------------------------------------------
def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist: give a CSV with a '{PROMPT_COLUMN}' column")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return read_text_table(path)


def _resolve(value: object, base: Path) -> Path | None:
    """A path from a table cell (relative ones join ``base``); None for blank cells."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else base / path


def _label_matrix(table: pd.DataFrame, class_names: Sequence[str], path: Path) -> tuple[np.ndarray, str]:
    """The table's label columns when it has all of them, else the labeler on each prompt."""
    if all(name in table.columns for name in class_names):
        values = table[list(class_names)].replace("", np.nan)
        try:
            return values.to_numpy(dtype=np.float64), "columns"
        except ValueError as exc:
            raise DataError(f"{path}: label columns {list(class_names)} must hold 1, 0, -1 or blank ({exc})") from exc
    rows = [label_report(text).as_row() for text in table[PROMPT_COLUMN]]
    return np.array([[row.get(name, np.nan) for name in class_names] for row in rows], dtype=np.float64), "labeler"


def read_prompt_table(path: str | Path, class_names: Sequence[str], image_root: str | Path | None = None) -> PromptTable:
    """Prompts, labels for ``class_names`` and optional real image paths from a CSV (or parquet) table."""
    path = Path(path)
    table = _read_table(path)
    if PROMPT_COLUMN not in table.columns:
        raise MissingColumnsError(f"{path} has no '{PROMPT_COLUMN}' column (columns: {list(table.columns)}); "
                                  f"put one report text per row under a '{PROMPT_COLUMN}' header")
    prompts = check_prompts([str(p) for p in table[PROMPT_COLUMN]])
    labels, source = _label_matrix(table, class_names, path)
    base = Path(image_root) if image_root is not None else path.parent
    column = table[IMAGE_PATH_COLUMN] if IMAGE_PATH_COLUMN in table.columns else [None] * len(table)
    images = [_resolve(v, base) for v in column]
    log.info("%d prompts from %s: labels from %s, %d with a real image", len(prompts), path, source,
             sum(p is not None for p in images))
    return PromptTable(prompts, labels, images, source)


def manifest_paths(manifest: str | Path, splits: Sequence[str] | None = None,
                   image_root: str | Path | None = None) -> list[Path]:
    """Image paths of a manifest's rows in ``splits`` (all rows when None), resolved like train-evaluator."""
    manifest = Path(manifest)
    df = read_manifest(manifest)
    if splits is not None:
        df = df[df["split"].astype(str).isin(list(splits))]
    base = Path(image_root) if image_root is not None else manifest.parent
    return [p for p in (_resolve(v, base) for v in df[IMAGE_PATH_COLUMN]) if p is not None]


def manifest_labels(manifest: str | Path, paths: Sequence[Path], image_root: str | Path | None = None) -> np.ndarray:
    """CheXpert labels (len(paths), 14) of the manifest rows behind ``paths`` (NaN where a path is not found)."""
    manifest = Path(manifest)
    df = read_manifest(manifest)
    base = Path(image_root) if image_root is not None else manifest.parent
    by_path = {_resolve(v, base): i for i, v in enumerate(df[IMAGE_PATH_COLUMN])}
    values = df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)  # (rows, 14)
    nan_row = np.full(len(CHEXPERT_LABELS), np.nan)
    return np.stack([values[by_path[p]] if p in by_path else nan_row for p in paths]) if paths else values[:0]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_extractors(cfg: EvalConfig, evaluator: CXREvaluator, device: torch.device) -> dict[str, FeatureExtractor]:
    """The configured extractors; cxrgen-evaluator reuses the loaded evaluator, others load NAME=WEIGHTS."""
    weights = dict(item.split("=", 1) for item in cfg.extractor_weights)
    unknown = sorted(set(weights) - set(cfg.extractors))
    if unknown:
        raise ConfigError(f"weights given for {unknown}, which are not among the extractors {list(cfg.extractors)}")
    out: dict[str, FeatureExtractor] = {}
    for name in cfg.extractors:
        if name == CXREvaluatorExtractor.name and name not in weights:
            out[name] = CXREvaluatorExtractor(evaluator)
        else:
            out[name] = build_extractor(name, weights.get(name), device=str(device))
    return out


def _generate(cfg: EvalConfig, pipe: CXRPipeline, prompts: list[str], model_name: str, device: torch.device,
              out_dir: Path) -> tuple[list[list[Path]], dict]:
    """Sample the missing images into out_dir/generated; the files grouped per prompt and the compute record."""
    sampling = pipe.sampling
    compute = denoiser_cost(pipe, sampling.steps, sampling.guidance_scale)
    folder = out_dir / GENERATED_FOLDER
    k = cfg.n_per_prompt
    before = sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0
    record: dict = {}
    with measure_throughput(device, min(cfg.batch_size, k), record):
        paths = generate_images(pipe, prompts, folder, n_per_prompt=k, sampling=sampling, model_name=model_name,
                                batch_size=cfg.batch_size, process_index=0, num_processes=1,
                                progress=cfg.progress)
        record["images"] = sum(1 for _ in folder.glob("*.png")) - before
    measured = keep_throughput(record["throughput"], folder)
    compute.update(dataclasses.asdict(measured) if measured else {"images_per_s": None})
    compute["images_generated_now"] = record["images"]
    compute["sampler"] = sampling.sampler
    return [paths[p * k : (p + 1) * k] for p in range(len(prompts))], compute


def _real_reference(cfg: EvalConfig) -> list[Path]:
    real = manifest_paths(cfg.real_manifest, None, cfg.image_root)
    if not real:
        raise DataError(f"real manifest {cfg.real_manifest} has no rows with an image_path: give real images")
    if cfg.max_real is not None and len(real) > cfg.max_real:
        keep = np.sort(np.random.default_rng(0 if cfg.seed is None else cfg.seed).choice(len(real), cfg.max_real,
                                                                                        replace=False))
        real = [real[i] for i in keep]
    return real


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------
def run_evaluation(cfg: EvalConfig) -> dict:
    """Generate (resumable), score and write the metrics JSON and report; returns the metrics."""
    if not cfg.prompts or not cfg.real_manifest:
        raise ConfigError("give both --prompts CSV and --real MANIFEST")
    out_dir = check_writable(cfg.out_dir)
    location = resolve_model(cfg.model)
    memo = memorization_sets(cfg, location)  # the model's own training images, known before any work
    device = resolve_device(cfg.device)
    evaluator = CXREvaluator.from_pretrained(cfg.evaluator or DEFAULT_EVALUATOR, device=device)
    table = read_prompt_table(cfg.prompts, evaluator.class_names, cfg.image_root)  # bad CSV fails before sampling
    real = _real_reference(cfg)
    extractors = build_extractors(cfg, evaluator, device)
    pipe = load_pipeline(location, device, num_images_per_prompt=cfg.n_per_prompt, steps=cfg.steps,
                         guidance_scale=cfg.guidance_scale, sampler=cfg.sampler, seed=cfg.seed)
    model_name = model_label(location)
    generated, compute = _generate(cfg, pipe, table.prompts, model_name, device, out_dir)
    del pipe
    sets = ImageSets(generated=generated, real=real, train=memo.train, heldout=memo.heldout,
                     real_labels=manifest_labels(cfg.real_manifest, real, cfg.image_root))
    result = score(cfg, table, sets, evaluator, extractors, out_dir)
    result["compute"] = {**compute, **result.get("compute", {})}
    result["settings"] = {"model": model_name, "evaluator": str(cfg.evaluator or DEFAULT_EVALUATOR),
                          "prompts": str(cfg.prompts), "real_manifest": str(cfg.real_manifest),
                          "train_manifest": memo.source, "heldout_in_train": memo.heldout_in_train,
                          "n_per_prompt": cfg.n_per_prompt,
                          "label_source": table.label_source}
    result = to_json_ready(result)
    json_path = Path(cfg.json_path) if cfg.json_path else out_dir / METRICS_NAME
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_report(result, table, sets, out_dir, cfg)
    return result


def to_json_ready(obj: object) -> object:
    """Nested dicts/lists with numpy scalars as Python numbers, NaN/inf as None, paths as strings."""
    if isinstance(obj, dict):
        return {str(k): to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
