"""``cxrgen train-multiview CONFIG``: run one CoDi XR training stage from a ``MultiviewTrainConfig``.

``STAGES`` maps the config's ``stage`` to a function ``(cfg, out_dir) -> metrics``; a new stage (the
joint denoiser) is one entry. Every run writes ``config.yaml`` and ``metrics.json`` to the out dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from cxrgen.config import load_config, save_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import MultiviewDataset, read_triplets, report_corpus, split_table
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)


def load_corpora(cfg: MultiviewTrainConfig) -> dict[str, dict[str, list[str]]]:
    """Report texts per corpus (``twin``, ``adult_pairs``, each manifest by its folder name) and split."""
    data = cfg.data
    corpora: dict[str, dict[str, list[str]]] = {}
    if data.twin_dirs:
        corpora["twin"] = report_corpus(read_triplets(data.twin_dirs), max_chars=data.max_report_chars)
    for path in data.report_manifests:
        name = Path(path).parent.name or Path(path).stem
        corpora[name] = report_corpus(manifests=[path], max_chars=data.max_report_chars)
    if not corpora:
        raise ConfigError("no report corpus: give data.twin_dirs and/or data.report_manifests")
    return corpora


def load_views(cfg: MultiviewTrainConfig) -> dict[str, MultiviewDataset]:
    """``train`` (every source's training triplets) and ``SOURCE/SPLIT`` held-out sets, images in memory."""
    data = cfg.data
    table = read_triplets(data.twin_dirs, data.adult_root, data.max_report_chars)
    table = table[table["report"].str.strip() != ""]  # adult pairs without imaging sentences
    sets = {"train": MultiviewDataset(split_table(table, "train"), data.image_size, cfg.progress)}
    for source in sorted(table["source"].unique()):
        for split in ("validate", "test"):
            part = split_table(table[table["source"] == source], split)
            if len(part) >= 2:
                sets[f"{source}/{split}"] = MultiviewDataset(part, data.image_size)
    return sets


def _stage_report_ae(cfg: MultiviewTrainConfig, out: Path) -> dict:
    from cxrgen.train.report_ae import run_report_ae

    return run_report_ae(cfg, load_corpora(cfg), out)


def _stage_aligned(cfg: MultiviewTrainConfig, out: Path) -> dict:
    from cxrgen.train.aligned import run_aligned

    views = load_views(cfg)
    return run_aligned(cfg, views, views["train"].reports, out)


def _stage_joint(cfg: MultiviewTrainConfig, out: Path) -> dict:
    from cxrgen.train.joint import run_joint

    metrics = run_joint(dataclasses.replace(cfg, out_dir=str(out)))
    return {k: v for k, v in metrics.items() if k != "loss_history"}  # the history stays in joint_metrics.json


def _stage_codi(stage: str) -> Callable[[MultiviewTrainConfig, Path], dict]:
    def run(cfg: MultiviewTrainConfig, out: Path) -> dict:
        from cxrgen.train.codi import run_codi

        metrics = run_codi(dataclasses.replace(cfg, out_dir=str(out)), stage)
        return {k: v for k, v in metrics.items() if k != "loss_history"}  # the history stays in codi_metrics.json
    return run


#: stage name -> runner(cfg, out_dir) -> metrics dict.
STAGES: dict[str, Callable[[MultiviewTrainConfig, Path], dict]] = {
    "report_ae": _stage_report_ae,
    "aligned": _stage_aligned,
    "joint": _stage_joint,
    "codi_single": _stage_codi("codi_single"),
    "codi_bridge": _stage_codi("codi_bridge"),
}


def train_multiview(cfg: MultiviewTrainConfig, out_dir: str | Path | None = None) -> dict:
    """Run ``cfg.stage`` with ``cfg.threads`` torch threads (restored after); write config.yaml and metrics.json."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not available here; stages: {sorted(STAGES)}")
    out = Path(out_dir or cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        metrics = STAGES[cfg.stage](cfg, out)
    finally:
        torch.set_num_threads(before)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("stage %s done: %s", cfg.stage, out / "metrics.json")
    return metrics


def run_train_multiview(config_path: str | Path | None, overrides: list[str] | None = None,
                        out_dir: str | Path | None = None) -> dict:
    """The CLI entry: load the YAML config (+ overrides) and run its stage."""
    return train_multiview(load_config(MultiviewTrainConfig, config_path, overrides), out_dir)
