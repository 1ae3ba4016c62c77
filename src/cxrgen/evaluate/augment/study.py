"""``cxrgen augment-study``: train the same classifier per arm and seed, score it on the real test split.

Sizes are matched: with n = ``n_real`` (per class for a multi-class task, in all for a multi-label
one) and m = ``n_synthetic`` (default n), "real" trains on n real images, "synthetic" on m synthetic
images, "real+synthetic" on n + m, and "synthetic-then-real" pre-trains on the m synthetic images and
fine-tunes on the n real ones. Each seed draws its own n real (and m synthetic) training images,
initialises the network and orders the batches; every arm of a seed starts from the same weights.
Writes ``augment_study.json``, ``augment_study.md`` and ``augment_study.png`` to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cxrgen.config.augment import COMBINED, PRETRAIN, REAL, SYNTHETIC, AugmentStudyConfig
from cxrgen.evaluate.augment.data import PATH, Task, check_generator_unseen, draw_rows, read_task
from cxrgen.evaluate.augment.report import PLOT_NAME, markdown_table, write_plot
from cxrgen.evaluate.augment.stats import class_aurocs, summarise
from cxrgen.evaluate.augment.synthetic import generate_synthetic, read_synthetic
from cxrgen.evaluate.augment.train import Images, predict, train_arm
from cxrgen.evaluate.suite import load_images
from cxrgen.outputs import check_writable
from cxrgen.pipeline import model_label, resolve_model

log = logging.getLogger(__name__)

JSON_NAME, TABLE_NAME = "augment_study.json", "augment_study.md"
DATA_STREAM = 1  # second entry of a seed's numpy seed sequence: the draw of training images


def _needs_synthetic(cfg: AugmentStudyConfig) -> bool:
    return any(arm != REAL for arm in cfg.arms)


def _synthetic(task: Task, cfg: AugmentStudyConfig) -> tuple[list[str], np.ndarray, dict]:
    """Synthetic image paths, targets and their description (generated and cached, or from a CSV)."""
    if not _needs_synthetic(cfg):
        return [], np.zeros((0, len(task.classes)), dtype=np.float32), {}
    if cfg.synthetic_csv:
        paths, targets, info = read_synthetic(cfg.synthetic_csv, task, cfg)
        return paths, targets, {"source": "csv", **info}
    paths, targets, info = read_synthetic(generate_synthetic(task, cfg), task, cfg)
    return paths, targets, {"source": "model", "model": model_label(cfg.model), **info}


def sizes(cfg: AugmentStudyConfig, n_classes: int) -> dict:
    """Training images per arm (real, synthetic) and the matched n, m that give them."""
    per = n_classes if cfg.multiclass else 1
    n, m = cfg.n_real * per, cfg.synthetic_size * per
    arms = {REAL: (n, 0), SYNTHETIC: (0, m), COMBINED: (n, m), PRETRAIN: (n, m)}
    return {"n_real": cfg.n_real, "n_synthetic": cfg.synthetic_size, "per": "class" if cfg.multiclass else "all",
            "arms": {a: {"real": arms[a][0], "synthetic": arms[a][1]} for a in cfg.arms}}


def _load(paths: list[str], index: set[int], size: int, what: str, progress: bool) -> dict[int, torch.Tensor]:
    order = sorted(index)
    images = load_images([Path(paths[i]) for i in order], size, progress, f"reading {what} images")
    return dict(zip(order, images, strict=True))


def run_seeds(task: Task, syn_paths: list[str], syn_targets: np.ndarray, cfg: AugmentStudyConfig,
              test_images: torch.Tensor, fidelity: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Test probabilities (seeds, n_test, C) per arm; each seed draws its own training images.

    ``fidelity`` (a list) receives per seed the real-only classifier's per-class AUROC on that seed's
    synthetic images against their prompts' labels: does the generator draw what the prompt says?"""
    draws = {}
    for seed in cfg.seeds:
        rng = np.random.default_rng([seed, DATA_STREAM])
        real = draw_rows(task.train_targets, cfg.n_real, task.multiclass, rng)
        syn = draw_rows(syn_targets, cfg.synthetic_size, task.multiclass, rng) if _needs_synthetic(cfg) else []
        draws[seed] = (real, syn)
    real_cache = _load(task.train[PATH].tolist(), {int(i) for r, _ in draws.values() for i in r},
                       cfg.image_size, "real training", cfg.progress)
    syn_cache = _load(syn_paths, {int(i) for _, s in draws.values() for i in s}, cfg.image_size, "synthetic",
                      cfg.progress)
    probs: dict[str, list[np.ndarray]] = {arm: [] for arm in cfg.arms}
    for seed, (real_idx, syn_idx) in draws.items():
        real = _images(real_cache, real_idx, task.train_targets, cfg.image_size)
        syn = _images(syn_cache, syn_idx, syn_targets, cfg.image_size)
        for arm in cfg.arms:
            net = train_arm(arm, real, syn, cfg, task.multiclass, seed)
            probs[arm].append(predict(net, test_images, task.multiclass))
            if fidelity is not None and arm == REAL and syn.images.shape[0]:
                fidelity.append(label_fidelity(net, syn, task.multiclass))
            log.info("seed %d, %s: trained", seed, arm)
    return {arm: np.stack(p) for arm, p in probs.items()}


def _images(cache: dict[int, torch.Tensor], index, targets: np.ndarray, size: int) -> Images:
    """The cached images of rows ``index`` (1, S, S each) with their targets, as one training set."""
    index = [int(i) for i in index]
    images = torch.stack([cache[i] for i in index]) if index else torch.zeros(0, 1, size, size)
    return Images(images, torch.from_numpy(targets[index].astype(np.float32)).reshape(len(index), targets.shape[1]))


def label_fidelity(net: torch.nn.Module, synthetic: Images, multiclass: bool) -> np.ndarray:
    """Per-class AUROC (C,) of a classifier trained on real images, scored on synthetic ones against their prompts' labels."""
    return class_aurocs(predict(net, synthetic.images, multiclass)[None], synthetic.targets.numpy())[0]


def _fidelity(per_seed: list[np.ndarray], classes: tuple[str, ...]) -> dict | None:
    """Mean over seeds of the real-only classifier's AUROC on the synthetic images (prompt labels); None: no such arm."""
    if not per_seed:
        return None
    mean = np.nanmean(np.stack(per_seed), axis=0)
    return {"what": "AUROC of the real-only classifier on the synthetic training images, against their prompts' "
                    "labels (mean over seeds)", "macro": float(np.nanmean(mean)),
            "per_class": {c: float(v) for c, v in zip(classes, mean, strict=True)}}


def run_augment_study(cfg: AugmentStudyConfig) -> dict:
    """Run the study and write its JSON, markdown table and plot to ``cfg.out_dir``; returns the JSON."""
    start = time.perf_counter()
    out = check_writable(cfg.out_dir)
    task = read_task(cfg)
    generator_model = None if cfg.synthetic_csv else resolve_model(cfg.model)
    unseen = check_generator_unseen(task.test, cfg, generator_model) if _needs_synthetic(cfg) else "no synthetic arm"
    syn_paths, syn_targets, syn_info = _synthetic(task, cfg)
    test_images = load_images([Path(p) for p in task.test[PATH]], cfg.image_size, cfg.progress, "reading test images")
    fidelity: list[np.ndarray] = []
    probs = run_seeds(task, syn_paths, syn_targets, cfg, test_images, fidelity)
    reference = REAL if REAL in cfg.arms else None
    stats = summarise(probs, task.test_targets, task.classes, cfg.bootstrap, cfg.confidence,
                      np.random.default_rng(cfg.seeds[0]), reference)
    result = {
        "task": Path(cfg.manifest).parent.name or Path(cfg.manifest).stem,
        "kind": "multi-class" if task.multiclass else "multi-label",
        "classes": list(task.classes), "seeds": list(cfg.seeds), "reference": reference,
        "sizes": {**sizes(cfg, len(task.classes)), "test": len(task.test),
                  "test_per_class": {c: int(v) for c, v in zip(task.classes, task.test_targets.sum(0), strict=True)},
                  "synthetic_pool": len(syn_paths), "real_pool": len(task.train)},
        "auroc": stats, "synthetic": syn_info, "synthetic_label_fidelity": _fidelity(fidelity, task.classes),
        "test_split_unseen_by_generator": unseen,
        "classifier": {"arch": cfg.arch, "image_size": cfg.image_size, "epochs": cfg.epochs,
                       "matched_steps": cfg.matched_steps,
                       "finetune_epochs": cfg.finetune_epochs or cfg.epochs, "lr": cfg.lr,
                       "finetune_lr": cfg.finetune_lr or cfg.lr, "batch_size": cfg.batch_size},
        "notes": task.notes, "config": dataclasses.asdict(cfg), "seconds": time.perf_counter() - start,
    }
    (out / JSON_NAME).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / TABLE_NAME).write_text(markdown_table(result), encoding="utf-8")
    write_plot(result, out / PLOT_NAME)
    log.info("augmentation study written to %s", out)
    return result
