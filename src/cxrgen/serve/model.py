"""The demo's pipeline adapter and files: every call into the pipeline is in this module.

``load_model`` and ``sample_images`` are the only code that touches ``CXRPipeline`` (its loading and
its call signature); ``generate_files`` writes PNG and DICOM with cxrgen's synthetic metadata.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrgen.config import ImageConfig, SamplingConfig
from cxrgen.data.images import save_png
from cxrgen.dicom import write_dicom
from cxrgen.generate import image_metadata
from cxrgen.pipeline import CXRPipeline, load_pipeline, model_label
from cxrgen.serve.core import DemoResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModel:
    """A loaded pipeline with what the page needs to know about it."""

    pipe: CXRPipeline
    name: str  # recorded in each file's metadata
    image_config: ImageConfig
    defaults: SamplingConfig


# --- pipeline adapter: the only code that touches the pipeline -------------------------------
def load_model(model: str | Path | None = None, device: str = "cpu") -> DemoModel:
    """Load ``model`` (a directory or hub id; None: the packaged default) for the demo."""
    pipe = load_pipeline(model, device)
    return DemoModel(pipe=pipe, name=model_label(model), image_config=pipe.image_config, defaults=pipe.sampling)


def sample_images(model: DemoModel, prompt: str, settings: SamplingConfig) -> torch.Tensor:
    """Images (N, 1, H, W) in the model's pixel range; image k from its own generator seeded seed + k."""
    generators = [torch.Generator().manual_seed(settings.seed + k) for k in range(settings.num_images_per_prompt)]
    out = model.pipe(prompt, num_images_per_prompt=settings.num_images_per_prompt,
                     num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                     negative_prompt=settings.negative_prompt, sampler=settings.sampler, generator=generators,
                     progress=False)
    return out.images


# --- one generation to files ------------------------------------------------------------------
def generate_files(model: DemoModel, prompt: str, settings: SamplingConfig, out_dir: str | Path) -> DemoResult:
    """Sample the images of one request and write each as PNG and DICOM (synthetic metadata in both)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images = sample_images(model, prompt, settings)  # (N, 1, H, W)
    seconds = time.perf_counter() - start
    pngs, dicoms, seeds = [], [], []
    for k, image in enumerate(images):
        seed = settings.seed + k
        meta = image_metadata(prompt, seed, settings, model.name)
        stem = f"cxrgen-synthetic-seed{seed}"
        pngs.append(save_png(image, out_dir / f"{stem}.png", model.image_config, text=meta))
        dicoms.append(write_dicom(image, out_dir / f"{stem}.dcm", model.image_config, meta))
        seeds.append(seed)
    log.info("demo: %d image(s), %d %s steps, %.1f s", len(seeds), settings.steps, settings.sampler, seconds)
    return DemoResult(pngs=pngs, dicoms=dicoms, seeds=seeds, seconds=seconds)
