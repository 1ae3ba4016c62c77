"""``cxrgen train-multiview CONFIG``: run one CoDi XR training stage (here: ``joint``, the joint U-ViT)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrgen.config import load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.errors import ConfigError
from cxrgen.train.joint import run_joint

#: Stage name -> the function that trains it from the whole config.
STAGES: dict[str, Callable[[MultiviewTrainConfig], dict[str, Any]]] = {"joint": run_joint}


def run_train_multiview(config: str | Path, overrides: list[str] | None = None,
                        out_dir: str | Path | None = None) -> dict[str, Any]:
    """Load the YAML config (with ``a.b=v`` overrides), run its stage, return the stage's metrics."""
    cfg = load_config(MultiviewTrainConfig, config, overrides or [])
    if out_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage {cfg.stage!r} is not available in this build; available: {sorted(STAGES)}")
    return STAGES[cfg.stage](cfg)
