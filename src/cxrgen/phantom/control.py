"""Controllability benchmark: does the prompt's finding, side and size appear in the generated image?

Images are generated for the fixed :func:`~cxrgen.phantom.reports.benchmark_prompts` (held-out
wordings, never seen in training) and read back with the phantom measurer. Scores (each a mean of
0/1 items over every image):

- ``laterality_acc``: measured side == prompted side, for every effusion (right / left /
  bilateral), pneumothorax and consolidation a prompt states (``laterality_by_finding`` splits it
  per finding);
- ``size_spearman``: Spearman correlation between prompted effusion size (small < moderate < large)
  and the measured fluid height (the higher side's, so size is scored apart from laterality);
- ``presence_acc``: effusion, pneumothorax and consolidation measured present exactly when prompted;
- ``negation_acc``: every finding a prompt negates ("There is no effusion ...") is measured absent;
- ``cardiomegaly_acc``: measured cardiomegaly (CTR > cut) == prompted cardiomegaly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from cxrgen.config import SamplingConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.phantom.findings import EFFUSION_SIZES, FINDINGS, PhantomFindings
from cxrgen.phantom.measure import MeasuredFindings, measure
from cxrgen.phantom.reports import TEMPLATES, benchmark_prompts

log = logging.getLogger(__name__)

#: The keys every benchmark result has (``per_prompt`` and ``settings`` are added beside them).
CONTROL_KEYS = ("laterality_acc", "size_spearman", "presence_acc", "negation_acc", "cardiomegaly_acc", "n")
#: Findings scored for presence / negation / side (cardiomegaly is scored on its own as well).
PRESENCE_FINDINGS = ("effusion", "pneumothorax", "consolidation")
#: Negation template key -> the findings it states absent ("normal_heart": no cardiomegaly).
NEGATION_KEYS: dict[str, tuple[str, ...]] = {
    "no_effusion_ptx": ("effusion", "pneumothorax"), "no_effusion": ("effusion",),
    "no_ptx": ("pneumothorax",), "no_consolidation": ("consolidation",), "normal_heart": ("cardiomegaly",),
}
PROMPT_BATCH = 32  # prompts sampled per pipeline call


def negated_findings(prompt: str) -> set[str]:
    """Findings a phantom report negates, found by its negation sentences (either wording set)."""
    found: set[str] = set()
    for templates in TEMPLATES.values():
        for key, findings in NEGATION_KEYS.items():
            if any(sentence in prompt for sentence in templates[key]):
                found.update(findings)
    return found


def _present(m: MeasuredFindings | PhantomFindings) -> dict[str, bool]:
    return {"effusion": m.effusion_side != "none", "pneumothorax": m.pneumothorax_side != "none",
            "consolidation": m.consolidation_lobe != "none", "cardiomegaly": bool(m.cardiomegaly)}


def score_image(measured: MeasuredFindings | None, truth: PhantomFindings, prompt: str) -> dict[str, Any]:
    """The benchmark items of one generated image (``measured`` None: unreadable, every item wrong)."""
    negation: list[bool] = []
    sides = dict(zip(PRESENCE_FINDINGS, (truth.effusion_side, truth.pneumothorax_side, truth.consolidation_side), strict=True))
    laterality = {k: False for k, side in sides.items() if side != "none"}  # finding -> side right
    presence = {k: False for k in PRESENCE_FINDINGS}
    cardio, height = False, 0.0
    if measured is not None:
        got, want = _present(measured), _present(truth)
        presence = {k: got[k] == want[k] for k in PRESENCE_FINDINGS}
        negation = [not got[k] for k in sorted(negated_findings(prompt))]
        cardio = measured.cardiomegaly == truth.cardiomegaly
        if truth.effusion_side != "none":  # the larger side: size is scored apart from laterality
            height = float(max(measured.effusion_height.values()))
        got_sides = dict(zip(PRESENCE_FINDINGS, (measured.effusion_side, measured.pneumothorax_side,
                                                 measured.consolidation_lobe.split("_")[0]), strict=True))
        laterality = {k: got_sides[k] == sides[k] for k in laterality}
    else:
        negation = [False] * len(negated_findings(prompt))
    return {"laterality": laterality, "presence": presence, "negation": negation, "cardiomegaly": cardio,
            "fluid_height": height}


def _mean(items: list[bool]) -> float:
    return float(np.mean(items)) if items else math.nan


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's scores from :func:`score_image` rows that carry their ``truth``."""
    if not rows:
        raise DataError("no benchmark images to score; give at least one prompt and image")
    sized = [(EFFUSION_SIZES.index(r["truth"].effusion_size), r["fluid_height"]) for r in rows
             if r["truth"].effusion_side != "none"]
    rho = math.nan
    ranks, heights = zip(*sized, strict=True) if sized else ((), ())
    if len(set(ranks)) >= 2:  # undefined (nan) unless at least two sizes were prompted
        # constant measured heights carry no size information: agreement 0, not undefined
        rho = 0.0 if np.ptp(heights) == 0 else float(spearmanr(ranks, heights).statistic)
    return {
        "laterality_acc": _mean([x for r in rows for x in r["laterality"].values()]),
        "size_spearman": rho,
        "presence_acc": _mean([x for r in rows for x in r["presence"].values()]),
        "negation_acc": _mean([x for r in rows for x in r["negation"]]),
        "cardiomegaly_acc": _mean([r["cardiomegaly"] for r in rows]),
        "n": len(rows),
        "laterality_by_finding": {k: _mean([r["laterality"][k] for r in rows if k in r["laterality"]])
                                  for k in PRESENCE_FINDINGS},
    }


def measure_or_none(image: np.ndarray) -> MeasuredFindings | None:
    """The measurer's findings, or None (logged) when the image is not a readable phantom."""
    try:
        return measure(image)
    except DataError as exc:  # e.g. a flat image with no air/abdomen contrast
        log.warning("benchmark image not measurable: %s", exc)
        return None


def _measured_row(m: MeasuredFindings | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"effusion_side": m.effusion_side, "effusion_size": m.effusion_size,
            "effusion_height": {k: round(v, 4) for k, v in m.effusion_height.items()},
            "pneumothorax_side": m.pneumothorax_side, "pneumothorax_extent": m.pneumothorax_extent,
            "ctr": round(m.ctr, 4), "consolidation_lobe": m.consolidation_lobe}


def generate_for(pipe: Any, prompts: list[str], sampling: SamplingConfig, seed: int,
                 progress: bool = True) -> torch.Tensor:
    """Images (N * K, 1, H, W) in [-1, 1] for ``prompts``; image k of prompt i has its own seed (seed, i, k)."""
    k = sampling.num_images_per_prompt
    out = []
    starts = range(0, len(prompts), PROMPT_BATCH)
    for start in tqdm(starts, desc="control", disable=not progress):
        batch = prompts[start:start + PROMPT_BATCH]
        gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start + i, j]).generate_state(1)[0]))
                for i in range(len(batch)) for j in range(k)]
        out.append(pipe.sample(batch, sampling, generator=gens, progress=False).images)
    return torch.cat(out)  # (N * K, 1, H, W)


def control_benchmark(pipe: Any, n_per_prompt: int = 2, sampling: SamplingConfig | None = None, seed: int = 0,
                      cases: list[tuple[str, PhantomFindings]] | None = None,
                      progress: bool = True, wording: str = "heldout",
                      findings: tuple[str, ...] = FINDINGS) -> dict[str, Any]:
    """Generate ``n_per_prompt`` images per benchmark prompt with ``pipe`` (a CXRPipeline) and score them.

    ``sampling`` None: the pipeline's defaults. ``cases`` replaces :func:`benchmark_prompts` (tests);
    ``wording`` "train" scores the same findings worded as in training (a diagnostic, not the benchmark);
    ``findings`` keeps the prompts whose findings are all among them (a model trained on fewer kinds).
    Returns the CONTROL_KEYS scores plus ``per_prompt`` (measurements) and ``settings``.
    """
    if n_per_prompt < 1:
        raise ConfigError(f"n_per_prompt={n_per_prompt}: give at least 1 image per prompt")
    sampling = dataclasses.replace(sampling or pipe.sampling, num_images_per_prompt=n_per_prompt)
    custom = cases is not None
    cases = cases if custom else benchmark_prompts(wording=wording, findings=findings)
    prompts = [prompt for prompt, _ in cases]
    images = generate_for(pipe, prompts, sampling, seed, progress)
    low, high = pipe.image_config.low, pipe.image_config.high
    pixels = ((images[:, 0].float() - low) / (high - low)).numpy()  # (N * K, H, W) in [0, 1]
    rows, per_prompt = [], []
    for i, (prompt, truth) in enumerate(cases):
        measured = [measure_or_none(pixels[i * n_per_prompt + j]) for j in range(n_per_prompt)]
        scored = [dict(score_image(m, truth, prompt), truth=truth) for m in measured]
        rows.extend(scored)
        per_prompt.append({"prompt": prompt, "truth": truth.to_row(),
                           "measured": [_measured_row(m) for m in measured],
                           "laterality": [s["laterality"] for s in scored]})
    result: dict[str, Any] = summarise(rows)
    result["per_prompt"] = per_prompt
    result["settings"] = {"sampler": sampling.sampler, "steps": sampling.steps,
                          "guidance_scale": sampling.guidance_scale, "n_per_prompt": n_per_prompt,
                          "seed": seed, "prompts": len(cases), "image_size": pipe.image_size,
                          "wording": "custom" if custom else wording,
                          "findings": "custom" if custom else list(findings)}
    log.info("control benchmark: %s", {k: result[k] for k in CONTROL_KEYS})
    return result


def run_control(model: str, n_per_prompt: int = 2, steps: int | None = None, guidance_scale: float | None = None,
                sampler: str | None = None, seed: int = 0, device: str = "cpu",
                wording: str = "heldout", findings: tuple[str, ...] = FINDINGS) -> dict[str, Any]:
    """What ``cxrgen control --model M`` calls: load the pipeline, override sampling, run the benchmark."""
    from cxrgen.pipeline import load_pipeline

    pipe = load_pipeline(model, device, steps=steps, guidance_scale=guidance_scale, sampler=sampler)
    return control_benchmark(pipe, n_per_prompt, pipe.sampling, seed, wording=wording, findings=findings)
