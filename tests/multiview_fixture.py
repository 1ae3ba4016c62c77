"""A tiny synthetic twin folder (twin.csv + PNG pairs) whose images show what the reports say.

Frontal: a heart blob (larger with cardiomegaly) and a bright base on the effusion's side (the
patient's left on the image's right). Lateral: a bright vertical band (the spine, posterior) and a
bright posterior base with an effusion. Fast to write (no CT), so the multi-view tests need no twin extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png

SIDES = ("none", "left", "right")
FINDINGS = {"none": "No pleural effusion.", "left": "Left pleural effusion.", "right": "Right pleural effusion."}


def _frontal(side: str, big_heart: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.2 + 0.05 * rng.standard_normal((size, size))
    radius = 0.22 if big_heart else 0.12
    img += 0.5 * (((x - 0.55) ** 2 + (y - 0.6) ** 2) < radius**2)
    if side != "none":  # patient's left = image right
        img += 0.6 * ((y > 0.7) & ((x > 0.6) if side == "left" else (x < 0.4)))
    return np.clip(img, 0, 1)


def _lateral(side: str, big_heart: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.05 * rng.standard_normal((size, size))
    img += 0.4 * ((x > 0.75) & (x < 0.85))  # spine, posterior = image right
    img += 0.4 * (((x - 0.35) ** 2 + (y - 0.6) ** 2) < (0.2 if big_heart else 0.1) ** 2)
    if side != "none":
        img += 0.5 * ((y > 0.75) & (x > 0.5))
    return np.clip(img, 0, 1)


def write_synthetic_twin(out: Path, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    """Write ``n`` synthetic studies (splits 2/3 train, 1/6 validate, 1/6 test) into ``out``; return it."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    unit = ImageConfig(size=size, low=0.0, high=1.0)
    rows = []
    for i in range(n):
        side, big = SIDES[i % 3], bool((i // 3) % 2)
        stem = f"twin_{seed}_{i:06d}"
        split = "train" if i < 2 * n // 3 else "validate" if i < 5 * n // 6 else "test"
        heart = "The heart is enlarged." if big else "Heart size is normal."
        for view, draw in (("pa", _frontal), ("lateral", _lateral)):
            save_png(draw(side, big, size, rng), out / "images" / f"{stem}_{view}.png", unit, bits=8)
        rows.append({"study_id": stem, "patient_id": stem, "split": split, "findings": f"{FINDINGS[side]} {heart}",
                     "impression": FINDINGS[side], "pa_path": f"images/{stem}_pa.png",
                     "lateral_path": f"images/{stem}_lateral.png", "effusion_side": side, "effusion_size": "small",
                     "pneumothorax_side": "none", "consolidation_lobe": "none", "cardiomegaly": big,
                     "nodule_lobe": "none", "wording": "heldout" if split == "test" else "train"})
    pd.DataFrame(rows).to_csv(out / "twin.csv", index=False)
    return out


def tiny_text_codi_pipeline(text_encoder, reports: list[str], steps: int, size: int = 16, timesteps: int = 100,
                            **kw):
    """A tiny CodiPipeline (codi-tiny, pixel space) whose image trunks read ``text_encoder``'s sentence vectors."""
    import torch

    from cxrgen.autoencoder import IdentityCodec
    from cxrgen.config import SamplingConfig, ScheduleConfig
    from cxrgen.denoisers.codi import build_codi_denoiser
    from cxrgen.pipelines import CodiPipeline
    from cxrgen.samplers import training_scheduler
    from cxrgen.text.report_standin import HashedReportCodec

    model = build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1,
                                sample_size=size, patch_size=4, report_tokens=2, report_dim=8,
                                num_train_timesteps=timesteps, context_dim=384, context_tokens=3,
                                prediction_type="sample")
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2"), "sample")
    report = HashedReportCodec(tokens=2, token_dim=8, buckets=64).set_bank(reports)
    return CodiPipeline(model, IdentityCodec(), report, sched, image_size=size, text_encoder=text_encoder,
                        sampling=SamplingConfig(sampler="ddim", steps=steps, guidance_scale=2.0), **kw)


def train_tiny_text_codi(tmp_path: Path, *overrides: str) -> Path:
    """Stage codi_single through the CLI on an 8-case 32 px CT twin: the tiny denoiser reading the report through
    MiniLM sentence vectors (the [twin] and [minilm] extras), ``overrides`` added; the run folder."""
    from cxrgen.cli import main
    from cxrgen.twin import write_twin_set

    write_twin_set(8, 32, tmp_path / "twin", seed=3, progress=False)
    settings = [f"data.twin_dirs=[{tmp_path / 'twin'}]", "data.image_size=32", "codi.denoiser=codi-tiny",
                "codi.model_image_size=32", "codi.report_codec=null", "codi.report_tokens=2", "codi.report_dim=8",
                "codi.steps=1", "codi.batch_size=4", "codi.text.max_sentences=3", "stage=codi_single", *overrides]
    config = str(Path(__file__).parents[1] / "src" / "cxrgen" / "configs" / "multiview-codi-pixel64.yaml")
    args = ["train-multiview", config, "--out", str(tmp_path / "run")] + [a for o in settings for a in ("--set", o)]
    if main(args) != 0:
        raise AssertionError(f"cxrgen {' '.join(args)} failed")
    return tmp_path / "run"
