"""Quality filter (RoentGen-v2): reject generated images whose evaluator labels contradict the prompt.

The prompt's labels come from the labeler (data.labeler): an observation stated present (1) or
negated (0); uncertain (-1) and unmentioned observations are not checked. "No Finding" is also
expected absent when the prompt states any pathology present (CheXpert's definition of No Finding).
Only the evaluator's own classes are checked. With threshold t, an image contradicts its prompt when

- a class the prompt states present has evaluator probability p < t, or
- a class the prompt negates has p > 1 - t.

The contradiction score is the largest margin past these bounds, max(t - p_present, p_negated - (1 - t));
an image is accepted when it is <= 0, and among rejected draws the lowest score is the least wrong.
A prompt with nothing the evaluator knows is never rejected. generate.generate_images draws a rejected
image again with a new seed (generate.retry_seed), so a filtered run is as deterministic as any other.

Calibrated operating points (the default when the evaluator folder has ``filter_operating_points.json``,
written by evaluate.filter_calibration): one cut point c per class, chosen on real held-out images;
stated present needs p >= c, stated absent p <= c, and the score is max(c - p_present, p_absent - c).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch

from cxrgen.data.labeler import NO_FINDING, NOT_PATHOLOGY, label_report
from cxrgen.data.manifest import NEGATIVE, POSITIVE
from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import WEIGHTS_NAME, CXREvaluator
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.generate import GeneratedFiles, run_generate

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # the evaluator's decision boundary: present means p >= 0.5, negated p <= 0.5
DEFAULT_MAX_TRIES = 4
OPERATING_POINTS_NAME = "filter_operating_points.json"  # in the evaluator's folder (evaluate.filter_calibration)


def prompt_expectations(prompt: str, class_names: tuple[str, ...]) -> dict[str, float]:
    """The classes the prompt states present (1.0) or absent (0.0), among ``class_names`` only."""
    labels = label_report(prompt).labels
    stated = {k: v for k, v in labels.items() if v in (POSITIVE, NEGATIVE)}
    if NO_FINDING not in stated and any(v == POSITIVE for k, v in labels.items() if k not in NOT_PATHOLOGY):
        stated[NO_FINDING] = NEGATIVE  # a stated pathology rules out "No Finding"
    return {k: stated[k] for k in class_names if k in stated}


class PromptConsistencyFilter:
    """Contradiction score of images against their prompt's labels, from cxrgen-evaluator probabilities."""

    def __init__(self, evaluator: CXREvaluator, threshold: float = DEFAULT_THRESHOLD,
                 operating_points: dict[str, float] | None = None) -> None:
        names = evaluator.class_names
        if operating_points is not None:
            missing = [c for c in names if c not in operating_points]
            if missing or not all(0.0 < operating_points[c] < 1.0 for c in names):
                raise ConfigError(f"operating points {operating_points} must give every evaluator class {list(names)} "
                                  "a probability in (0, 1): re-run `cxrgen calibrate-filter`")
            self.present_min = {c: float(operating_points[c]) for c in names}
            self.absent_max = dict(self.present_min)
            points = ",".join(f"{c}:{operating_points[c]:.4f}" for c in names)
            self.name = f"{evaluator.name} calibrated={points}"
        else:
            if not 0.0 < threshold < 1.0:
                raise ConfigError(f"filter threshold {threshold}: give a probability strictly between 0 and 1, "
                                  "e.g. 0.5")
            self.present_min = dict.fromkeys(names, threshold)
            self.absent_max = dict.fromkeys(names, 1.0 - threshold)
            self.name = f"{evaluator.name} t={threshold:g} classes={','.join(names)}"
        self.evaluator, self.threshold, self.operating_points = evaluator.eval(), threshold, operating_points

    def expectations(self, prompt: str) -> dict[str, float]:
        """What this filter checks for ``prompt`` (class -> 1.0 present / 0.0 absent)."""
        return _expectations(prompt, self.evaluator.class_names)

    @torch.no_grad()
    def judge(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """Contradiction score (B,) of images (B, 1, H, W) in [-1, 1]: accepted when <= 0."""
        if not self.expectations(prompt):
            return torch.full((images.shape[0],), -1.0)  # nothing to check: every image passes
        return self.score(prompt, self.evaluator.probabilities(images.to(self.evaluator.device)).cpu())

    def score(self, prompt: str, probs: torch.Tensor) -> torch.Tensor:
        """Contradiction score (B,) from evaluator probabilities (B, C) already computed: accepted when <= 0."""
        expected = self.expectations(prompt)
        if not expected:
            return torch.full((probs.shape[0],), -1.0)
        names = list(self.evaluator.class_names)
        margins = [self.present_min[k] - probs[:, names.index(k)] if v == POSITIVE
                   else probs[:, names.index(k)] - self.absent_max[k] for k, v in expected.items()]
        return torch.stack(margins, dim=1).amax(dim=1)  # (B,)


@functools.lru_cache(maxsize=256)
def _expectations(prompt: str, class_names: tuple[str, ...]) -> dict[str, float]:
    expected = prompt_expectations(prompt, class_names)
    if not expected:
        log.warning("prompt %r states nothing the evaluator knows (%s): its images are not filtered", prompt,
                    list(class_names))
    return expected


def load_operating_points(evaluator: str | Path) -> dict[str, float] | None:
    """Per-class cut points from the evaluator folder's ``filter_operating_points.json`` (None: not calibrated)."""
    path = Path(evaluator) / OPERATING_POINTS_NAME
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        points = {name: float(point["threshold"]) for name, point in saved["classes"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a filter calibration ({err}): re-run `cxrgen calibrate-filter`") from err
    recorded = saved.get("evaluator_weights_sha1")
    if recorded and weights_sha1(evaluator) not in (None, recorded):
        log.warning("%s was calibrated for other weights than %s: re-run `cxrgen calibrate-filter`", path,
                    Path(evaluator) / WEIGHTS_NAME)
    return points


def weights_sha1(evaluator: str | Path) -> str | None:
    """SHA-1 of an evaluator folder's weights file (None when absent): what its calibration belongs to."""
    weights = Path(evaluator) / WEIGHTS_NAME
    return hashlib.sha1(weights.read_bytes()).hexdigest() if weights.is_file() else None


def load_filter(evaluator: str | Path | None = None, threshold: float | None = None,
                device: str | torch.device = "cpu") -> PromptConsistencyFilter:
    """The filter with a saved cxrgen-evaluator (None: the shipped one); threshold None: its calibrated points."""
    folder = evaluator or DEFAULT_EVALUATOR
    model = CXREvaluator.from_pretrained(folder, device=device)
    if threshold is not None:
        return PromptConsistencyFilter(model, threshold)
    points = load_operating_points(folder)
    if points is None:
        log.warning("evaluator %s has no %s (run `cxrgen calibrate-filter`): filtering at the fixed threshold %g",
                    folder, OPERATING_POINTS_NAME, DEFAULT_THRESHOLD)
        return PromptConsistencyFilter(model, DEFAULT_THRESHOLD)
    return PromptConsistencyFilter(model, operating_points=points)


def run_generate_filtered(*args, evaluator: str | None = None, threshold: float | None = None,
                          max_tries: int = DEFAULT_MAX_TRIES, **kwargs) -> GeneratedFiles:
    """``cxrgen generate --filter``: ``run_generate`` (same arguments) with the prompt-consistency filter."""
    return run_generate(*args, sample_filter=load_filter(evaluator, threshold), max_tries=max_tries, **kwargs)
