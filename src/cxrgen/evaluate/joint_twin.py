"""Any-to-any on the CT twin: the twin's measurers read generated views and compare them with the case's truth.

The scoring pieces :mod:`cxrgen.evaluate.multiview` (``cxrgen evaluate-multiview``) combines, and the compute
of a joint model. Scores, each a mean of 0/1 items:

- report -> frontal ``laterality``: the measured side equals the true side for every one-sided or
  bilateral effusion, pneumothorax and consolidation of the case (as ``cxrgen control``);
- report -> lateral ``effusion_presence``: effusion measured on the lateral exactly when the case has one;
- frontal -> lateral ``coherence``: the mean of the lateral measurer's agreements with the truth
  (effusion presence, effusion size, consolidation zone, cardiomegaly; :func:`cxrgen.twin.measure.compare`),
  reported with the same score of the real lateral views (the ceiling) and their ratio;
- report -> frontal + lateral (joint): the same per view, and ``views_agree`` of the two generated views;
- the deliberate mistakes that must score lower (:data:`cxrgen.evaluate.multiview.MISTAKES`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.compute import count_flops
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


def joint_pair_scores(frontal: torch.Tensor, lateral: torch.Tensor, truths: list[TwinFindings], ctrs: list[float],
                      size: int) -> dict[str, float]:
    """A generated frontal + lateral pair per case: the frontals' laterality, the laterals' effusion presence
    and per-field coherence with the truth, and ``views_agree``: the share of cases whose two views state the
    same effusion presence (the pair is coherent with itself)."""
    f, lat = to_measured(frontal, size), to_measured(lateral, size)
    front_effusion = [measure(x, "pa").effusion_side != "none" for x in f]
    side_effusion = [measure(x, "lateral").effusion_present for x in lat]
    present = [t.effusion_side != "none" for t in truths]
    return {"frontal_laterality": laterality(f, truths),
            "lateral_effusion_presence": float(np.mean([a == b for a, b in zip(side_effusion, present, strict=True)])),
            "lateral_coherence": lateral_scores(lat, truths, ctrs)["coherence"],
            "views_agree": float(np.mean([a == b for a, b in zip(front_effusion, side_effusion, strict=True)]))}


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
