"""A report autoencoder's reconstructions of twin reports scored against the cases' truth.

Frontal -> report decodes a generated latent with the report autoencoder's decoder, so the reconstruction
of a report (posterior mean -> decode) is the ceiling of frontal -> report; scored as the issue scores
frontal -> report (``truth_report_scores``: the labeler on the decoded text against the twin case's
findings), not against the labeler's reading of the reference's (held-out) wording.

``add_truth_scores(run_dir)`` adds these scores to a ``report_ae`` stage run's ``metrics.json``
(``eval.twin[/SPLIT].vs_truth``); ``cxrgen train-multiview`` calls it when ``report_ae.eval_truth`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrgen.config import load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import clip_report, read_triplets
from cxrgen.errors import DataError
from cxrgen.evaluate.twin_report import truth_findings, truth_report_scores
from cxrgen.text.report_ae import ReportCodec

DECODE_BATCH = 128


def twin_reports_and_truths(twin_dirs: Sequence[str | Path], split: str, n: int, max_chars: int = 400
                            ) -> tuple[list[str], list[dict[str, str | None]]]:
    """The first ``n`` reports of ``split`` (as the report_ae stage reads them) and their cases' truth."""
    table = read_triplets(list(twin_dirs))
    rows = [r for r in table[table["split"] == split].to_dict("records")
            if isinstance(r["report"], str) and r["report"].strip()][:n]
    if not rows:
        raise DataError(f"no {split!r} reports in {list(twin_dirs)}: give folders written by `cxrgen twin`")
    return [clip_report(r["report"].strip(), max_chars) for r in rows], [truth_findings(r) for r in rows]


def reconstruction_vs_truth(codec: ReportCodec, reports: list[str], truths: list[dict[str, str | None]],
                            beams: int = 1, rerank: bool | None = None) -> dict[str, Any]:
    """``truth_report_scores`` of the reconstructions (posterior mean -> decode) of ``reports``, plus the
    references' own scores (``references_vs_truth``: what a perfect reconstruction would score)."""
    decoded: list[str] = []
    for s in range(0, len(reports), DECODE_BATCH):
        decoded += codec.decode(codec.encode(reports[s:s + DECODE_BATCH]), beams=beams, rerank=rerank)
    refs = truth_report_scores(reports, truths)
    return {**truth_report_scores(decoded, truths),
            "references_vs_truth": {k: refs[k] for k in ("finding_f1", "side_accuracy", "exact")},
            "errors": [{"original": r, "decoded": d} for r, d, t in zip(reports, decoded, truths, strict=True)
                       if truth_report_scores([d], [t])["exact"] < 1.0][:3]}


def wants_truth_scores(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` (its config.yaml) is a report_ae run on twin reports with ``eval_truth``."""
    cfg = load_config(MultiviewTrainConfig, Path(run_dir) / "config.yaml", [])
    return cfg.stage == "report_ae" and cfg.report_ae.eval_truth and bool(cfg.data.twin_dirs)


def add_truth_scores(run_dir: str | Path) -> dict[str, Any]:
    """Score a ``report_ae`` run's model against the twin truth on its ``eval_splits``; write the scores into
    its ``metrics.json`` (``eval.twin`` for test, ``eval.twin/SPLIT`` otherwise, key ``vs_truth``); return them."""
    run_dir = Path(run_dir)
    cfg = load_config(MultiviewTrainConfig, run_dir / "config.yaml", [])
    if cfg.stage != "report_ae" or not cfg.data.twin_dirs:
        raise DataError(f"{run_dir} is not a report_ae run on twin reports (stage {cfg.stage!r}, twin_dirs "
                        f"{list(cfg.data.twin_dirs)}); give a `cxrgen train-multiview` report_ae out dir")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    codec = ReportCodec.from_pretrained(metrics["model"])
    stage, scores = cfg.report_ae, {}
    for split in stage.eval_splits:
        reports, truths = twin_reports_and_truths(cfg.data.twin_dirs, split, stage.eval_reports,
                                                  cfg.data.max_report_chars)
        key = "twin" if split == "test" else f"twin/{split}"
        scores[key] = reconstruction_vs_truth(codec, reports, truths, stage.beams)
        metrics.setdefault("eval", {}).setdefault(key, {})["vs_truth"] = scores[key]
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return scores
