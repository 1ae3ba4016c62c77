"""Any-to-any on the CT twin: the twin's measurers read generated views and compare them with the case's truth.

Held-out twin cases (split ``test``, held-out wordings). Scores, each a mean of 0/1 items:

- report -> frontal ``laterality``: the measured side equals the true side for every one-sided or
  bilateral effusion, pneumothorax and consolidation of the case (as ``cxrgen control``);
- report -> lateral ``effusion_presence``: effusion measured on the lateral exactly when the case has one;
- frontal -> lateral ``coherence``: the mean of the lateral measurer's agreements with the truth
  (effusion presence, effusion size, consolidation zone, cardiomegaly; :func:`cxrgen.twin.measure.compare`),
  reported with the same score of the real lateral views (the ceiling) and their ratio;
- deliberate mistakes that must score lower: reports shuffled against the cases (report -> frontal) and
  a lateral generated with no frontal given (the marginal, ``->lateral``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cxrgen.compute import count_flops
from cxrgen.data.twin_triplets import load_views, read_twin_triplets
from cxrgen.errors import DataError
from cxrgen.pipelines import MultiViewPipeline
from cxrgen.twin.findings import TwinFindings, lobe_side
from cxrgen.twin.measure import compare, measure

log = logging.getLogger(__name__)

LATERAL_FIELDS = ("effusion", "effusion_size", "consolidation_zone", "cardiomegaly")


def truth_of(row: dict) -> TwinFindings:
    """The TwinFindings of a triplet row (its truth columns)."""
    words = ("effusion_side", "effusion_size", "pneumothorax_side", "pneumothorax_size", "consolidation_lobe")
    return TwinFindings(**{k: str(row[k]) for k in words},
                        cardiomegaly=str(row["cardiomegaly"]).lower() in ("true", "1", "1.0"))


def to_measured(images: torch.Tensor, size: int) -> list[np.ndarray]:
    """(N, 1, S', S') in [-1, 1] -> N arrays (size, size) in [0, 1] (area-averaged to the twin's side)."""
    if images.shape[-1] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="area")
    return [((x[0] + 1) / 2).clamp(0, 1).numpy() for x in images]


def laterality(images: list[np.ndarray], truths: list[TwinFindings]) -> float:
    """Share of stated sides (effusion, pneumothorax, consolidation) measured on the right side of the PA view."""
    hits = []
    for img, t in zip(images, truths, strict=True):
        m = measure(img, "pa")
        if t.effusion_side != "none":
            hits.append(m.effusion_side == t.effusion_side)
        if t.pneumothorax_side != "none":
            hits.append(m.pneumothorax_side == t.pneumothorax_side)
        if t.consolidation_lobe != "none":
            hits.append(m.consolidation_lobe != "none" and lobe_side(m.consolidation_lobe) == lobe_side(t.consolidation_lobe))
    return float(np.mean(hits)) if hits else float("nan")


def lateral_scores(images: list[np.ndarray], truths: list[TwinFindings], ctrs: list[float]) -> dict[str, float]:
    """Per-field agreement of the lateral measurer with the truth, and their mean (``coherence``)."""
    rows = [compare(measure(img, "lateral"), t, c) for img, t, c in zip(images, truths, ctrs, strict=True)]
    scores = {k: float(np.mean([r[k] for r in rows])) for k in LATERAL_FIELDS}
    return {**scores, "coherence": float(np.mean([scores[k] for k in LATERAL_FIELDS]))}


def _generate(pipe: MultiViewPipeline, batch: int, progress: bool, **kwargs: Any) -> Any:
    """Run ``pipe`` in batches over the given modalities; concatenate the generated views."""
    n = next(len(v) for k, v in kwargs.items() if k in ("frontal", "lateral", "report") and v is not None) \
        if any(kwargs.get(k) is not None for k in ("frontal", "lateral", "report")) else kwargs.pop("num", 1)
    kwargs.pop("num", None)
    outs = []
    for i in tqdm(range(0, n, batch), desc="generating", disable=not progress):
        part = {k: (v[i:i + batch] if k in ("frontal", "lateral", "report") and v is not None else v)
                for k, v in kwargs.items()}
        if not any(part.get(k) is not None for k in ("frontal", "lateral", "report")):
            part["num_samples"] = min(batch, n - i)
        part["generator"] = torch.Generator().manual_seed(1000 + i)
        outs.append(pipe(progress=False, **part))
    return {v: torch.cat([getattr(o, v) for o in outs]) for v in ("frontal", "lateral") if getattr(outs[0], v) is not None}


def evaluate_joint_twin(pipe: MultiViewPipeline, twin_dir: str, n: int = 60, split: str = "test", batch: int = 32,
                        progress: bool = True) -> dict[str, Any]:
    """Every twin score of the module docstring on the first ``n`` cases of ``split``."""
    table = read_twin_triplets(twin_dir)
    cases = table[table["split"] == split].reset_index(drop=True).iloc[:n]
    if not len(cases):
        raise DataError(f"no {split!r} cases in {twin_dir}")
    rows = cases.to_dict("records")
    truths, ctrs = [truth_of(r) for r in rows], [float(r["ctr"]) for r in rows]
    twin_size = int(json.loads((Path(twin_dir) / "twin.json").read_text(encoding="utf-8"))["size"])  # measured here
    frontal_real, lateral_real = load_views(cases, pipe.image_size)
    reports = list(cases["report"])
    shuffled = reports[1:] + reports[:1]
    gen = lambda **kw: _generate(pipe, batch, progress, **kw)  # noqa: E731
    r2f = to_measured(gen(report=reports, generate=["frontal"])["frontal"], twin_size)
    r2f_shuffled = to_measured(gen(report=shuffled, generate=["frontal"])["frontal"], twin_size)
    r2l = to_measured(gen(report=reports, generate=["lateral"])["lateral"], twin_size)
    f2l = to_measured(gen(frontal=frontal_real, generate=["lateral"])["lateral"], twin_size)
    marginal = to_measured(gen(generate=["lateral"], num=len(rows))["lateral"], twin_size)
    real_lat = to_measured(lateral_real, twin_size)
    present = [t.effusion_side != "none" for t in truths]
    ceiling = lateral_scores(real_lat, truths, ctrs)
    f2l_scores = lateral_scores(f2l, truths, ctrs)
    return {
        "n": len(rows), "split": split, "settings": {**pipe.sampling.__dict__},
        "report_to_frontal": {"laterality": laterality(r2f, truths),
                              "laterality_shuffled_reports": laterality(r2f_shuffled, truths),
                              "laterality_real_frontal": laterality(to_measured(frontal_real, twin_size), truths)},
        "report_to_lateral": {"effusion_presence": float(np.mean([measure(x, "lateral").effusion_present == p
                                                                  for x, p in zip(r2l, present, strict=True)])),
                              **{f"all_{k}": v for k, v in lateral_scores(r2l, truths, ctrs).items()}},
        "frontal_to_lateral": {**f2l_scores, "ceiling_real_pairs": ceiling,
                               "coherence_vs_ceiling": f2l_scores["coherence"] / max(ceiling["coherence"], 1e-9),
                               "no_frontal_given": lateral_scores(marginal, truths, ctrs)},
    }


def joint_cost(pipe: MultiViewPipeline, steps: int | None = None, guidance_scale: float | None = None) -> dict[str, Any]:
    """Parameters and GFLOPs of one generated frontal + lateral pair from a report (report -> frontal+lateral)."""
    den = pipe.denoiser
    steps = steps or pipe.sampling.steps
    w = pipe.sampling.guidance_scale if guidance_scale is None else guidance_scale
    lat = {m: torch.zeros(1, *den.latent_shape(m)) for m in den.modalities}
    times = {m: torch.ones(1, dtype=torch.long) for m in den.modalities}
    fwd = count_flops(lambda: den(lat, times))
    z = torch.zeros(1, *den.latent_shape("frontal"))
    decode = count_flops(lambda: pipe.autoencoder.decode(z))
    passes = 2 if w != 1.0 else 1  # the conditional pass and the marginal (report at t = T)
    total = fwd * steps * passes + 2 * decode
    return {"denoiser_params": sum(p.numel() for p in den.parameters()),
            "autoencoder_params": sum(p.numel() for p in pipe.autoencoder.parameters()),
            "gflops_denoiser_forward": fwd / 1e9, "gflops_decode_per_view": decode / 1e9, "steps": steps,
            "forward_passes_per_step": passes, "gflops_per_generated_pair": total / 1e9}
