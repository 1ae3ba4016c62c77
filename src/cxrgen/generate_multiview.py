"""``cxrgen generate --views / --frontal / --lateral / --to``: any-to-any generation with a MultiViewPipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.errors import ConfigError
from cxrgen.outputs import check_writable
from cxrgen.pipelines import load_multiview_pipeline

log = logging.getLogger(__name__)


def run_generate_multiview(reports: Sequence[str], out_dir: str | Path, model: str | Path | None,
                           to: str | Sequence[str] | None = None, frontal: str | Path | None = None,
                           lateral: str | Path | None = None, n: int = 1, steps: int | None = None,
                           guidance_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                           device: str = "cpu", progress: bool = True) -> list[Path]:
    """Generate ``to`` from the given report(s) and/or view image files; write PNGs, reports and JSON.

    Given images are read, made grayscale and resized to the model's side (logged); nothing is flipped.
    """
    if model is None:
        raise ConfigError("any-to-any generation needs --model DIR (a MultiViewPipeline folder written by "
                          "`cxrgen train-multiview` with stage joint or codi_bridge)")
    out = check_writable(out_dir)
    pipe = load_multiview_pipeline(model)  # either arm: MultiViewPipeline or CodiPipeline
    if device != "auto":
        for part in (pipe.denoiser, pipe.autoencoder):
            part.to(device)
    cfg = ImageConfig(size=pipe.image_size)
    given: dict[str, object] = {}
    for name, path in (("frontal", frontal), ("lateral", lateral)):
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"--{name} {path}: no such image file")
            given[name] = load_image(path, cfg)[None]  # (1, 1, S, S) in [-1, 1]
            log.info("%s image %s read at %dx%d", name, path, cfg.size, cfg.size)
    if reports:
        given["report"] = list(reports)
    if not given:
        raise ConfigError("nothing given: pass report text, --frontal IMG and/or --lateral IMG")
    generator = torch.Generator().manual_seed(pipe.sampling.seed if seed is None else seed)
    result = pipe(**given, generate=to, num_inference_steps=steps, guidance_scale=guidance_scale, num_samples=n,
                  generator=generator, sampler=sampler, progress=progress)
    paths = result.save(out, stem="multiview", model=str(Path(model).resolve()))
    log.info("mode %s: %d file(s) in %s", result.metadata()["mode"], len(paths), out)
    return paths
