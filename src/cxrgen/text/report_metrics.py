"""Report-vs-report metrics: finding agreement by the labeler, BLEU-1..4 and ROUGE-L.

Used for the report autoencoder's reconstructions and for generated reports (image -> report).
Finding agreement reads both texts with the cxrgen labeler (CheXpert's 14 observations): each
observation is positive, uncertain or not stated/negative in each text. BLEU (Papineni et al. 2002)
comes from sacrebleu, ROUGE-L (Lin 2004) from rouge-score, both on lower-cased text; without those
packages (the ``reports`` extra) their values are None, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import CHEXPERT_LABELS, POSITIVE, UNCERTAIN
from cxrgen.errors import DataError

log = logging.getLogger(__name__)

#: Observations compared by finding agreement ("No Finding" follows from the others).
OBSERVATIONS: tuple[str, ...] = tuple(c for c in CHEXPERT_LABELS if c != "No Finding")


def _states(text: str) -> tuple[dict[str, int], dict[str, str]]:
    """Per observation 2 = positive, 1 = uncertain, 0 = negative or unstated; and the stated sides."""
    result = label_report(text)
    states = {o: 2 if result.labels.get(o) == POSITIVE else 1 if result.labels.get(o) == UNCERTAIN else 0
              for o in OBSERVATIONS}
    sides = {o: d["laterality"] for o, d in result.details.items() if "laterality" in d}
    return states, sides


def finding_agreement(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """How far generated reports state the findings of their references, by the labeler.

    ``agreement``: share of (report, observation) pairs in the same state; ``exact``: share of reports
    with every observation in the same state; ``f1``: micro F1 of positive findings; ``side_accuracy``:
    share of positive reference findings with a side whose hypothesis states the same side (None
    when no reference states a side).
    """
    if len(hypotheses) != len(references) or not references:
        raise DataError(f"got {len(hypotheses)} generated and {len(references)} reference reports; give equal, "
                        "non-zero numbers")
    same = exact = tp = fp = fn = sided = side_ok = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        (h, h_side), (r, r_side) = _states(hyp), _states(ref)
        matches = [h[o] == r[o] for o in OBSERVATIONS]
        same += sum(matches)
        exact += all(matches)
        tp += sum(h[o] == 2 and r[o] == 2 for o in OBSERVATIONS)
        fp += sum(h[o] == 2 and r[o] != 2 for o in OBSERVATIONS)
        fn += sum(h[o] != 2 and r[o] == 2 for o in OBSERVATIONS)
        for o, side in r_side.items():
            if r[o] == 2:
                sided += 1
                side_ok += h[o] == 2 and h_side.get(o) == side
    n = len(references)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"agreement": same / (n * len(OBSERVATIONS)), "exact": exact / n, "f1": f1,
            "side_accuracy": side_ok / sided if sided else None, "n": n}


def bleu_rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """Corpus BLEU-1..4 (sacrebleu, 0-100, lower-cased) and mean ROUGE-L F (rouge-score, 0-1)."""
    scores: dict[str, float | None] = {f"bleu{n}": None for n in range(1, 5)}
    scores["rougeL"] = None
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        log.warning("sacrebleu is not installed: no BLEU (pip install -e '.[reports]')")
    else:
        for n in range(1, 5):
            metric = BLEU(max_ngram_order=n, lowercase=True, effective_order=True)
            scores[f"bleu{n}"] = float(metric.corpus_score(list(hypotheses), [list(references)]).score)
    try:
        from rouge_score import rouge_scorer, tokenizers
    except ImportError:
        log.warning("rouge-score is not installed: no ROUGE-L (pip install -e '.[reports]')")
    else:
        # an explicit tokenizer: without one RougeScorer calls the root logging.info(), which installs a
        # root stderr handler (logging.basicConfig) in every program that computes ROUGE
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=False))
        values = [scorer.score(r.lower(), h.lower())["rougeL"].fmeasure for h, r in zip(hypotheses, references,
                                                                                      strict=True)]
        scores["rougeL"] = float(np.mean(values)) if values else None
    return scores


def report_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """Finding agreement (``finding_*``), BLEU-1..4 and ROUGE-L of generated against reference reports."""
    agreement = finding_agreement(hypotheses, references)
    return {**{f"finding_{k}": v for k, v in agreement.items() if k != "n"}, **bleu_rouge(hypotheses, references),
            "n": agreement["n"]}
