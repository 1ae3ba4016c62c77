"""The synthetic side of the augmentation study: images generated from training prompts, or a folder + CSV.

Generated images are conditioned on the prompts of drawn training rows (for the pediatric set:
"Pediatric AP chest radiograph. Viral pneumonia.", the exact wording the model was trained on) and
labelled with those rows' labels. They are cached per (model, sampling settings, prompt + label) in
``cache_dir``; image k of a prompt has a fixed seed, so a rerun, or a larger run, reuses every file
already there. Either way the study reads one table: ``image_path`` plus the task's label column(s),
the same format a user gives for images of their own model (``synthetic_csv``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.config.augment import AugmentStudyConfig
from cxrgen.errors import DataError, MissingColumnsError
from cxrgen.evaluate.augment.data import Task, draw_rows, label_targets, resolve_paths
from cxrgen.generate import generate_images, output_name
from cxrgen.pipeline import load_pipeline, model_label, resolve_model

log = logging.getLogger(__name__)

SYNTHETIC_CSV = "synthetic.csv"
WEIGHTS_RECORD = "weights_sha256.json"  # a model folder's weight hashes: a retrained model gets a new cache
SEED_SPAN = 1 << 24  # per-prompt seed offsets are drawn from the prompt's hash below this


@dataclass(frozen=True)
class PlanItem:
    """``count`` images of one prompt, labelled ``target`` (C,); ``key`` names its cache folder."""

    prompt: str
    target: tuple[float, ...]
    count: int

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps([self.prompt, list(self.target)]).encode()).hexdigest()[:16]

    def seed(self, base: int) -> int:
        """Seed of image 0 (image k gets seed + k): distinct per prompt, so classes do not share noise."""
        return base + int(self.key[:6], 16) % SEED_SPAN


def synthetic_plan(task: Task, cfg: AugmentStudyConfig) -> list[PlanItem]:
    """Prompts of training rows drawn as the real images are (n per class or n in all), grouped by prompt."""
    prompts = task.train["prompt"].astype(str).str.strip() if "prompt" in task.train.columns else None
    if prompts is None or (prompts == "").all():
        raise MissingColumnsError("the manifest's training rows have no prompt text to generate from: give "
                                  "--synthetic-csv with images made elsewhere, or a manifest from `cxrgen prepare`")
    rng = np.random.default_rng(cfg.generation_seed)
    counts: dict[tuple[str, tuple[float, ...]], int] = {}
    for i in draw_rows(task.train_targets, cfg.synthetic_size, task.multiclass, rng):
        key = (prompts.iloc[i], tuple(float(v) for v in task.train_targets[i]))
        counts[key] = counts.get(key, 0) + 1
    return [PlanItem(p, t, n) for (p, t), n in sorted(counts.items())]


def cache_folder(cfg: AugmentStudyConfig) -> Path:
    """``cache_dir``/<hash of the model, its weight record and the sampling settings>."""
    location = resolve_model(cfg.model)
    record = Path(location) / WEIGHTS_RECORD
    ident = {"model": model_label(cfg.model), "weights": record.read_text() if record.is_file() else "",
             "steps": cfg.steps, "sampler": cfg.sampler, "guidance_scale": cfg.guidance_scale,
             "seed": cfg.generation_seed}
    return Path(cfg.cache_dir) / hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def label_frame(targets: np.ndarray, classes: tuple[str, ...], cfg: AugmentStudyConfig) -> pd.DataFrame:
    """The label column(s) of a synthetic table: the class name (multi-class) or 1 / 0 columns."""
    if cfg.multiclass:
        return pd.DataFrame({cfg.label_column: [classes[int(np.argmax(t))] for t in targets]})
    return pd.DataFrame(targets, columns=list(classes))


def generate_synthetic(task: Task, cfg: AugmentStudyConfig) -> Path:
    """Generate (or find in the cache) the planned images; returns the CSV listing them with their labels."""
    root = cache_folder(cfg)
    plan = synthetic_plan(task, cfg)
    paths = {item: [root / item.key / output_name(0, k, "png") for k in range(item.count)] for item in plan}
    todo = [item for item in plan if not all(p.is_file() for p in paths[item])]
    log.info("synthetic images: %d prompt(s), %d to generate, cache %s", len(plan), len(todo), root)
    if todo:
        pipe = load_pipeline(cfg.model, cfg.device, steps=cfg.steps, sampler=cfg.sampler,
                             guidance_scale=cfg.guidance_scale)
        for item in todo:
            generate_images(pipe, [item.prompt], root / item.key, n_per_prompt=item.count,
                            seed=item.seed(cfg.generation_seed), model_name=model_label(cfg.model),
                            batch_size=cfg.generation_batch_size, progress=cfg.progress)
    items = [item for item in plan for _ in range(item.count)]
    table = pd.concat([pd.DataFrame({"image_path": [str(p) for item in plan for p in paths[item]],
                                     "prompt": [item.prompt for item in items]}),
                       label_frame(np.asarray([item.target for item in items]), task.classes, cfg)], axis=1)
    table.to_csv(root / SYNTHETIC_CSV, index=False)
    return root / SYNTHETIC_CSV


def read_synthetic(path: str | Path, task: Task, cfg: AugmentStudyConfig) -> tuple[list[str], np.ndarray, dict]:
    """Image paths, (N, C) targets and a description (sampling settings from the files) of a synthetic CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"synthetic image table {path} does not exist: give a CSV with image_path and "
                        f"{cfg.label_column or ', '.join(cfg.label_columns)}")
    df = pd.read_csv(path, dtype={"image_path": str})
    labels = [cfg.label_column] if cfg.multiclass else list(cfg.label_columns)
    missing = [c for c in ("image_path", *labels) if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"synthetic image table {path} lacks columns {missing}: give image_path (relative "
                                  "to the CSV's folder or absolute) and the real manifest's label column(s)")
    df = df.assign(path=resolve_paths(df["image_path"], path.parent))
    df, targets = label_targets(df, cfg, task.classes, task.notes, "synthetic")
    return df["path"].tolist(), targets, {"table": str(path), "images": len(df), "settings": _settings(df["path"])}


def _settings(paths: pd.Series) -> dict:
    """Sampling settings recorded in the first generated PNG (empty for images made elsewhere)."""
    if paths.empty or not str(paths.iloc[0]).lower().endswith(".png"):
        return {}
    try:
        with Image.open(paths.iloc[0]) as im:
            text = dict(getattr(im, "text", {}))
    except OSError:
        return {}
    return {k: text[k] for k in ("model", "sampler", "steps", "guidance_scale") if k in text}
