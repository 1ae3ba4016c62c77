"""The realism block of ``cxrgen evaluate``: C2ST, SWD, PRDC and per-finding FID from images and features.

Each metric lives in its own module (c2st.py, swd.py, prdc.py, per_finding.py); this one only picks
the image subsets, turns "too few images" into a ``None`` with the reason, and names the files the
C2ST classifier finds most "generated".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrgen.config import EvalConfig
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.image_pairs import NotEnoughImagesError
from cxrgen.evaluate.per_finding import fid_per_finding, prompt_findings
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.swd import swd

log = logging.getLogger(__name__)


def subset(n: int, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a seeded random ``limit`` of ``n`` rows (all rows when n <= limit)."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def _c2st(cfg: EvalConfig, real: torch.Tensor, gen: torch.Tensor, gen_paths: Sequence[Path],
          generator: torch.Generator) -> dict:
    keep = subset(gen.shape[0], cfg.realism_max_images, generator)
    settings = C2STSettings(folds=cfg.c2st_folds, epochs=cfg.c2st_epochs)
    try:
        result = c2st(real, gen[keep], settings, generator)
    except NotEnoughImagesError as exc:
        log.warning("C2ST is None: %s", exc)
        return {"cnn": None, "linear": None, "n": min(real.shape[0], gen.shape[0]), "note": str(exc)}
    for item in result["most_generated"]:
        item["index"] = int(keep[item["index"]])
        item["path"] = str(gen_paths[item["index"]])
    return result


def _swd(cfg: EvalConfig, real: torch.Tensor, gen: torch.Tensor, generator: torch.Generator) -> dict:
    keep = subset(gen.shape[0], cfg.realism_max_images, generator)
    try:
        return swd(real, gen[keep], generator=generator)
    except NotEnoughImagesError as exc:
        log.warning("SWD is None: %s", exc)
        return {"mean": None, "per_level": {}, "note": str(exc)}


def _prdc(cfg: EvalConfig, features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    out = {}
    for name, (real_f, gen_f) in features.items():
        try:
            out[name] = prdc(real_f, gen_f, cfg.prdc_k)
        except NotEnoughImagesError as exc:
            log.warning("PRDC (%s) is None: %s", name, exc)
            out[name] = {"precision": None, "recall": None, "density": None, "coverage": None, "note": str(exc)}
    return out


def realism_metrics(cfg: EvalConfig, gen: torch.Tensor, gen_paths: Sequence[Path], real_heldout: torch.Tensor,
                    prompts: Sequence[str], features: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    real_labels: np.ndarray | None) -> dict:
    """``c2st`` and ``swd`` (generated vs real held-out images), ``prdc`` per feature space, ``fid_per_finding``.

    ``gen`` (P * K, 1, H, W) holds K images per prompt in prompt order; ``features`` maps an extractor
    to its (real reference, generated) features; ``real_labels`` (N, 14) are the reference rows' CheXpert
    labels (None: no per-finding FID).
    """
    generator = torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed)
    real = real_heldout[subset(real_heldout.shape[0], cfg.realism_max_images, generator)]
    result = {"c2st": _c2st(cfg, real, gen, gen_paths, generator), "swd": _swd(cfg, real, gen, generator),
              "prdc": _prdc(cfg, features)}
    if real_labels is None:
        log.info("the real reference rows carry no CheXpert label columns: no per-finding FID")
        result["fid_per_finding"] = {}
        return result
    k = gen.shape[0] // len(prompts)
    gen_labels = np.repeat(prompt_findings(prompts), k, axis=0)  # (P * K, 14): each image has its prompt's labels
    result["fid_per_finding"] = fid_per_finding({n: r for n, (r, _) in features.items()}, real_labels,
                                                {n: g for n, (_, g) in features.items()}, gen_labels)
    return result
