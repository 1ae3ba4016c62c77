"""``cxrgen evaluate-multiview``: any-to-any scores on held-out twin cases, the issue's marks, the deliberate mistakes.

Works for any folder that loads as a multi-view pipeline (its ``model_index.json`` names a pipeline class of
:mod:`cxrgen.pipelines`) with the call interface ``pipe(frontal=, lateral=, report=, generate=[...],
num_samples=, generator=, progress=) -> .frontal / .lateral (N, 1, S, S) in [-1, 1], .report (N texts)``
and ``pipe.image_size`` / ``pipe.modes``. A mode the model does not serve is left out (listed in ``skipped``).

Scores (the twin's measurers on generated views area-averaged to the twin's side; :mod:`.joint_twin`):
report -> frontal laterality, report -> lateral effusion presence, frontal -> lateral coherence against the
real-pair ceiling, report -> frontal + lateral generated together (each view against the truth, and the two
views against each other), frontal -> report finding F1, side and negation accuracy of the labeler's reading of the
generated report against the case's truth (:mod:`.twin_report`; the agreement with the reference report's
reading and BLEU / ROUGE-L beside it). Each deliberate mistake is scored as the mark it must fail: views
swapped (the lateral given as the frontal), reports shuffled against the cases (report -> frontal; and
frontal -> report scored against other cases' truth), a lateral generated with no frontal given.
With the aligned encoders (``--aligned``): the retrieval baseline of frontal -> report, and the alignment score
(mean cosine in the aligned space) of generated views with the reports they were generated from, beside the
real views with their own reports and with other cases' reports.
With the adult set (``--adult``): the ``real_data`` block of :mod:`.adult_multiview` (FID_cxr / KID / PRDC / SWD
per view against real adult images, frontal -> report on held-out adult notes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cxrgen.config import ImageConfig
from cxrgen.data.twin_triplets import load_views, read_twin_triplets
from cxrgen.errors import DataError
from cxrgen.evaluate.adult_multiview import (
    ADULT_GRID_CASES,
    DEFAULT_ADULT_N,
    adult_report_lines,
    read_adult_views,
    score_adult,
)
from cxrgen.evaluate.joint_twin import joint_pair_scores, lateral_scores, laterality, to_measured, truth_of
from cxrgen.evaluate.report import save_sample_grid
from cxrgen.evaluate.twin_report import truth_findings, truth_report_scores
from cxrgen.pipelines import load_multiview_pipeline
from cxrgen.twin.measure import measure

log = logging.getLogger(__name__)

#: The issue's marks for the shipped twin model: "section.score" -> lowest passing value.
MARKS: dict[str, float] = {
    "report_to_frontal.laterality": 0.85,
    "report_to_lateral.effusion_presence": 0.85,
    "frontal_to_lateral.coherence_vs_ceiling": 0.85,
    "frontal_to_report.finding_f1": 0.85,
    "frontal_to_report.side_accuracy": 0.85,
}
#: Deliberate mistakes: name -> (where its score is, the mark it is scored as and must fail).
MISTAKES: dict[str, tuple[str, str]] = {
    "views_swapped": ("mistakes.views_swapped.coherence_vs_ceiling", "frontal_to_lateral.coherence_vs_ceiling"),
    "reports_shuffled": ("mistakes.reports_shuffled.laterality", "report_to_frontal.laterality"),
    "reports_shuffled_f1": ("mistakes.reports_shuffled_to_report.finding_f1", "frontal_to_report.finding_f1"),
    "no_frontal_given": ("mistakes.no_frontal_given.coherence_vs_ceiling", "frontal_to_lateral.coherence_vs_ceiling"),
}
GRID_CASES = 8
GRID_COLUMNS = ("real frontal", "real lateral", "report->frontal", "report->lateral", "frontal->lateral",
                "no frontal->lateral", "views swapped->lateral")


def run_modes(pipe: Any, given: dict[str, Any], generate: list[str], n: int, batch: int, seed: int,
              progress: bool) -> dict[str, Any]:
    """``pipe`` on ``n`` cases in batches (``given`` sliced per batch; none given: ``n`` samples);
    the generated views (N, 1, S, S) and reports (list) concatenated."""
    views: dict[str, list[torch.Tensor]] = {m: [] for m in generate if m != "report"}
    reports: list[str] = []
    for i in tqdm(range(0, n, batch), desc=f"{'+'.join(given) or 'nothing'}->{'+'.join(generate)}",
                  disable=not progress, leave=False):
        part = {k: v[i:i + batch] for k, v in given.items()}
        out = pipe(**part, generate=generate, num_samples=1 if part else min(batch, n - i),
                   generator=torch.Generator().manual_seed(seed + i), progress=False)
        for m in views:
            views[m].append(getattr(out, m))
        if "report" in generate:
            reports += list(out.report)
    return {**{m: torch.cat(v) for m, v in views.items()}, **({"report": reports} if "report" in generate else {})}


def _report_scores(generated: list[str], references: list[str], truths: list[dict]) -> dict[str, Any]:
    """Findings against the cases' truth (the marks' ``finding_f1``, ``side_accuracy``, ...) and, under
    ``vs_reference``, the labeler's agreement with the reference reports plus BLEU / ROUGE-L."""
    from cxrgen.text.report_metrics import report_scores

    s = report_scores(generated, references)
    vs_reference = {"finding_f1": s["finding_f1"], "side_accuracy": s["finding_side_accuracy"],
                    **{k: s[k] for k in ("finding_agreement", "finding_exact") if k in s}}
    return {**truth_report_scores(generated, truths), "vs_reference": vs_reference,
            **{k: s[k] for k in ("bleu1", "bleu4", "rougeL") if k in s}}


def _lateral_block(images: list[np.ndarray], truths: list, ctrs: list[float], ceiling: dict) -> dict[str, float]:
    scores = lateral_scores(images, truths, ctrs)
    return {**scores, "coherence_vs_ceiling": scores["coherence"] / max(ceiling["coherence"], 1e-9)}


def _alignment(aligned: Any, view: str, generated: torch.Tensor, real: torch.Tensor, reports: list[str],
               shuffled: list[str]) -> dict[str, float]:
    """Mean cosine in the aligned space of generated views with their reports, and of real views with their own
    reports (the level to reach) and with other cases' reports (the floor)."""
    from cxrgen.multiview.contrastive import alignment_score

    side = int(aligned.encoders.config.image_size)
    embed = lambda x: aligned.embed_images(F.interpolate(x.float(), size=(side, side), mode="area"), view)  # noqa: E731
    with torch.no_grad():
        z_gen, z_real = embed(generated), embed(real)
        z_rep, z_shuf = aligned.embed_reports(reports), aligned.embed_reports(shuffled)
    return {"generated": alignment_score(z_gen, z_rep), "real_pairs": alignment_score(z_real, z_rep),
            "real_shuffled": alignment_score(z_real, z_shuf)}


def score_multiview(pipe: Any, twin_dir: str | Path, n: int = 60, split: str = "test", batch: int = 16,
                    seed: int = 0, progress: bool = True, aligned: Any = None
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every score of the module docstring on the first ``n`` cases of ``split``, and the views for the grid.

    ``aligned``: an :class:`~cxrgen.multiview.aligned.AlignedModel` for the retrieval baseline of frontal ->
    report (the nearest of the twin's training reports) and the alignment scores of generated views.
    """
    table = read_twin_triplets(str(twin_dir))
    cases = table[table["split"] == split].reset_index(drop=True).iloc[:n]
    if not len(cases):
        raise DataError(f"no {split!r} cases in {twin_dir}: give --split train, validate or test of a `cxrgen twin` folder")
    rows = cases.to_dict("records")
    truths, ctrs, n = [truth_of(r) for r in rows], [float(r["ctr"]) for r in rows], len(rows)
    size = int(json.loads((Path(twin_dir) / "twin.json").read_text(encoding="utf-8"))["size"])
    frontal, lateral = load_views(cases, pipe.image_size)
    reports = list(cases["report"])
    shuffled = reports[1:] + reports[:1]  # every case gets another case's report
    modes = set(getattr(pipe, "modes", ()))
    skipped = [m for m in ("report->frontal", "report->lateral", "report->frontal+lateral", "frontal->lateral",
                           "->lateral", "frontal->report") if m not in modes]
    serves = lambda mode: mode not in skipped  # noqa: E731
    gen = lambda given, to: run_modes(pipe, given, to, n, batch, seed, progress)  # noqa: E731
    real_lat = to_measured(lateral, size)
    ceiling = lateral_scores(real_lat, truths, ctrs)
    out: dict[str, Any] = {"n": n, "split": split, "twin_size": size, "mistakes": {}}
    grid: dict[str, torch.Tensor] = {"real frontal": frontal, "real lateral": lateral}
    if serves("report->frontal"):
        r2f = gen({"report": reports}, ["frontal"])["frontal"]
        r2f_bad = gen({"report": shuffled}, ["frontal"])["frontal"]
        out["report_to_frontal"] = {"laterality": laterality(to_measured(r2f, size), truths),
                                    "laterality_real_frontal": laterality(to_measured(frontal, size), truths)}
        out["mistakes"]["reports_shuffled"] = {"laterality": laterality(to_measured(r2f_bad, size), truths)}
        grid["report->frontal"] = r2f
    if serves("report->lateral"):
        r2l = gen({"report": reports}, ["lateral"])["lateral"]
        present = [t.effusion_side != "none" for t in truths]
        out["report_to_lateral"] = {
            "effusion_presence": float(np.mean([measure(x, "lateral").effusion_present == p
                                                for x, p in zip(to_measured(r2l, size), present, strict=True)])),
            **{f"all_{k}": v for k, v in lateral_scores(to_measured(r2l, size), truths, ctrs).items()}}
        grid["report->lateral"] = r2l
    if serves("report->frontal+lateral"):
        pair = gen({"report": reports}, ["frontal", "lateral"])
        out["report_to_frontal_lateral"] = {"together": joint_pair_scores(pair["frontal"], pair["lateral"], truths, ctrs,
                                                                          size)}
        if serves("report->frontal") and serves("report->lateral"):  # the same views from two separate calls
            out["report_to_frontal_lateral"]["separately"] = joint_pair_scores(r2f, r2l, truths, ctrs, size)
        out["report_to_frontal_lateral"]["real_pairs"] = joint_pair_scores(frontal, lateral, truths, ctrs, size)
    if aligned is not None:
        out["alignment"] = {f"report_to_{view}": _alignment(aligned, view, grid[f"report->{view}"], real, reports,
                                                            shuffled)
                            for view, real in (("frontal", frontal), ("lateral", lateral))
                            if f"report->{view}" in grid}
    if serves("frontal->lateral"):
        f2l = gen({"frontal": frontal}, ["lateral"])["lateral"]
        swapped = gen({"frontal": lateral}, ["lateral"])["lateral"]  # the lateral view given in the frontal's place
        out["frontal_to_lateral"] = {**_lateral_block(to_measured(f2l, size), truths, ctrs, ceiling),
                                     "ceiling_real_pairs": ceiling}
        out["mistakes"]["views_swapped"] = _lateral_block(to_measured(swapped, size), truths, ctrs, ceiling)
        grid["frontal->lateral"], grid["views swapped->lateral"] = f2l, swapped
    if serves("->lateral"):
        marginal = gen({}, ["lateral"])["lateral"]
        out["mistakes"]["no_frontal_given"] = _lateral_block(to_measured(marginal, size), truths, ctrs, ceiling)
        grid["no frontal->lateral"] = marginal
    if serves("frontal->report"):
        f2r = gen({"frontal": frontal}, ["report"])["report"]
        facts = [truth_findings(r) for r in rows]
        out["frontal_to_report"] = {**_report_scores(f2r, reports, facts), "examples": [
            {"reference": r, "generated": g} for r, g in zip(reports[:3], f2r[:3], strict=False)],
            "reference_reports_vs_truth": truth_report_scores(reports, facts)}
        out["mistakes"]["reports_shuffled_to_report"] = _report_scores(f2r, shuffled, facts[1:] + facts[:1])
        if aligned is not None:
            gallery = list(read_twin_triplets(str(twin_dir)).query("split == 'train'")["report"])
            side = int(aligned.encoders.config.image_size)
            retrieved = aligned.retrieve_reports(F.interpolate(frontal, size=(side, side), mode="area"), "frontal",
                                                 gallery)
            out["frontal_to_report"]["retrieval_baseline"] = _report_scores(retrieved, reports, facts)
    out["skipped"] = skipped
    return out, grid


def _lookup(scores: dict[str, Any], key: str) -> float | None:
    value: Any = scores
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None else float(value)


def check_marks(scores: dict[str, Any]) -> dict[str, Any]:
    """``marks``: each mark's value and whether it passes; ``mistake_checks``: each deliberate mistake's value,
    whether it fails the mark it is scored as and whether it scores below the model's own value."""
    marks = {}
    for key, mark in MARKS.items():
        value = _lookup(scores, key)
        marks[key] = {"value": value, "mark": mark, "passed": value is not None and value >= mark}
    baseline = _lookup(scores, "frontal_to_report.retrieval_baseline.finding_f1")
    if baseline is not None:  # the issue: frontal -> report must also beat retrieval (F1 margin > 0)
        margin = _lookup(scores, "frontal_to_report.finding_f1") - baseline
        marks["frontal_to_report.finding_f1_minus_retrieval"] = {"value": margin, "mark": 0.0, "passed": margin > 0}
    checks = {}
    for name, (key, scored_as) in MISTAKES.items():
        value, model_value = _lookup(scores, key), _lookup(scores, scored_as)
        if value is None:
            continue
        checks[name] = {"value": value, "scored_as": scored_as, "model_value": model_value,
                        "fails_mark": value < MARKS[scored_as],
                        "below_model": model_value is not None and value < model_value}
    return {"marks": marks, "mistake_checks": checks,
            "all_marks_passed": all(m["passed"] for m in marks.values()),
            "all_mistakes_fail": all(c["fails_mark"] for c in checks.values())}


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def write_multiview_report(result: dict[str, Any], grid: dict[str, torch.Tensor], out_dir: Path) -> Path:
    """``report.md`` (marks, mistakes, every score) and ``grid.png`` (rows: cases; columns: GRID_COLUMNS)."""
    size = int(result["twin_size"])
    cols = [c for c in GRID_COLUMNS if c in grid]
    tiles = {c: F.interpolate(grid[c][:GRID_CASES].float(), size=(size, size), mode="area") for c in cols}
    rows = [[tiles[c][i] for c in cols] for i in range(min(GRID_CASES, len(tiles[cols[0]])))]
    save_sample_grid(rows, out_dir / "grid.png", ImageConfig(size=size))
    lines = [f"# Any-to-any on the twin: {result.get('model', '')}", "",
             f"{result['n']} cases of split `{result['split']}`; measured at {size} px; settings "
             f"`{json.dumps(result.get('settings', {}))}`.", "",
             "| mark | value | needs | passed |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(m['value'])} | >= {m['mark']} | {m['passed']} |" for k, m in result["marks"].items()]
    lines += ["", "Deliberate mistakes (each must fail the mark it is scored as, and score below the model):", "",
              "| mistake | value | scored as | model | fails mark | below model |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(c['value'])} | {c['scored_as']} | {_fmt(c['model_value'])} | {c['fails_mark']} | "
              f"{c['below_model']} |" for k, c in result["mistake_checks"].items()]
    if result["skipped"]:
        lines += ["", f"Modes this model does not serve (not scored): {', '.join(result['skipped'])}."]
    if "real_data" in result:
        columns = result["real_data"].get("grid_columns", [])
        lines += ["", *adult_report_lines(result["real_data"])]
        lines += [f"![adult samples](adult_grid.png) Columns: {' | '.join(columns)}; rows: the first images."] \
            if columns else []
    lines += ["", f"![samples](grid.png) Columns: {' | '.join(cols)}; rows: the first cases.", "",
              "All scores:", "", "```json", json.dumps({k: v for k, v in result.items() if k not in ("marks",
                                                        "mistake_checks")}, indent=2, default=str), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _adult_inputs(adult: str | Path, evaluator: str | None) -> tuple[Any, Any, str]:
    """The adult set's table, ``cxrgen evaluate``'s evaluator as a feature extractor and its folder, read before
    any sampling so that a wrong folder fails first."""
    from cxrgen.evaluate.evaluator import CXREvaluator
    from cxrgen.evaluate.extractors import CXREvaluatorExtractor
    from cxrgen.evaluate.run import DEFAULT_EVALUATOR

    table, folder = read_adult_views(adult), evaluator or DEFAULT_EVALUATOR
    return table, CXREvaluatorExtractor(CXREvaluator.from_pretrained(folder)), str(folder)


def _adult_block(pipe: Any, table: Any, extractor: Any, twin_dir: str | Path, split: str, adult_n: int, batch: int,
                 seed: int, progress: bool, aligned: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``real_data`` block (:mod:`.adult_multiview`), with the twin's DRRs of ``split`` as a reference row."""
    cases = read_twin_triplets(str(twin_dir)).query("split == @split").iloc[:adult_n]
    twin_views = dict(zip(("frontal", "lateral"), load_views(cases, pipe.image_size), strict=True))
    block, grid = score_adult(pipe, table, extractor, n=adult_n, batch=batch, seed=seed, progress=progress,
                              aligned=aligned, twin_views=twin_views)
    return {"twin_drr_split": split, **block, "grid_columns": list(grid)}, grid


def evaluate_multiview(model: str | Path, twin_dir: str | Path, out_dir: str | Path, json_path: str | Path | None = None,
                       n: int = 60, split: str = "test", steps: int | None = None, sampler: str | None = None,
                       guidance_scale: float | None = None, batch: int = 16, seed: int = 0, aligned: str | None = None,
                       progress: bool = True, adult: str | Path | None = None, adult_n: int = DEFAULT_ADULT_N,
                       evaluator: str | None = None) -> dict[str, Any]:
    """Load ``model``, score it on the twin (:func:`score_multiview`), check the marks and the mistakes;
    write the JSON (default ``out_dir/metrics.json``), ``report.md`` and ``grid.png``; return the JSON's dict.

    ``adult``: the adult set's folder (covid-cxr-256): adds the ``real_data`` block (:mod:`.adult_multiview`,
    at most ``adult_n`` images per view and held-out notes; FID_cxr in ``evaluator``'s space, default the
    shipped cxrgen-evaluator) and ``adult_grid.png``.
    """
    adult_inputs = _adult_inputs(adult, evaluator) if adult is not None else None  # fails before any sampling
    pipe = load_multiview_pipeline(model)
    overrides = {k: v for k, v in (("steps", steps), ("sampler", sampler), ("guidance_scale", guidance_scale))
                 if v is not None}
    if overrides:
        pipe.sampling = dataclasses.replace(pipe.sampling, **overrides)
    encoders = None
    if aligned:
        from cxrgen.multiview.aligned import AlignedModel

        encoders = AlignedModel.from_pretrained(aligned)
    scores, grid = score_multiview(pipe, twin_dir, n=n, split=split, batch=batch, seed=seed, progress=progress,
                                   aligned=encoders)
    adult_grid: dict[str, torch.Tensor] = {}
    if adult_inputs is not None:
        table, extractor, folder = adult_inputs
        block, adult_grid = _adult_block(pipe, table, extractor, twin_dir, split, adult_n, batch, seed, progress,
                                         encoders)
        scores["real_data"] = {"root": str(Path(adult).resolve()), "evaluator": folder, **block}
    settings = getattr(pipe, "sampling", None)
    result = {"model": str(Path(model).resolve()), "pipeline": type(pipe).__name__,
              "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {},
              **scores, **check_marks(scores)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if adult_grid:
        cols = list(adult_grid)
        cases = min(ADULT_GRID_CASES, *(len(v) for v in adult_grid.values()))
        save_sample_grid([[adult_grid[c][i] for c in cols] for i in range(cases)], out / "adult_grid.png",
                         ImageConfig(size=int(pipe.image_size)))
    json_path = Path(json_path) if json_path else out / "metrics.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    write_multiview_report(result, grid, out)
    log.info("evaluate-multiview: %s and %s", json_path, out / "report.md")
    return result
