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
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from cxrgen.data.labeler import NO_FINDING, NOT_PATHOLOGY, label_report
from cxrgen.data.manifest import NEGATIVE, POSITIVE
from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.generate import GeneratedFiles, run_generate

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # the evaluator's decision boundary: present means p >= 0.5, negated p <= 0.5
DEFAULT_MAX_TRIES = 4


def prompt_expectations(prompt: str, class_names: tuple[str, ...]) -> dict[str, float]:
    """The classes the prompt states present (1.0) or absent (0.0), among ``class_names`` only."""
    labels = label_report(prompt).labels
    stated = {k: v for k, v in labels.items() if v in (POSITIVE, NEGATIVE)}
    if NO_FINDING not in stated and any(v == POSITIVE for k, v in labels.items() if k not in NOT_PATHOLOGY):
        stated[NO_FINDING] = NEGATIVE  # a stated pathology rules out "No Finding"
    return {k: stated[k] for k in class_names if k in stated}


class PromptConsistencyFilter:
    """Contradiction score of images against their prompt's labels, from cxrgen-evaluator probabilities."""

    def __init__(self, evaluator: CXREvaluator, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"filter threshold {threshold}: give a probability strictly between 0 and 1, e.g. 0.5")
        self.evaluator, self.threshold = evaluator.eval(), threshold
        self.name = f"{evaluator.name} t={threshold:g} classes={','.join(evaluator.class_names)}"

    def expectations(self, prompt: str) -> dict[str, float]:
        """What this filter checks for ``prompt`` (class -> 1.0 present / 0.0 absent)."""
        return _expectations(prompt, self.evaluator.class_names)

    @torch.no_grad()
    def judge(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """Contradiction score (B,) of images (B, 1, H, W) in [-1, 1]: accepted when <= 0."""
        expected = self.expectations(prompt)
        if not expected:
            return torch.full((images.shape[0],), -1.0)  # nothing to check: every image passes
        probs = self.evaluator.probabilities(images.to(self.evaluator.device)).cpu()  # (B, C)
        names = list(self.evaluator.class_names)
        margins = [self.threshold - probs[:, names.index(k)] if v == POSITIVE
                   else probs[:, names.index(k)] - (1.0 - self.threshold) for k, v in expected.items()]
        return torch.stack(margins, dim=1).amax(dim=1)  # (B,)


@functools.lru_cache(maxsize=256)
def _expectations(prompt: str, class_names: tuple[str, ...]) -> dict[str, float]:
    expected = prompt_expectations(prompt, class_names)
    if not expected:
        log.warning("prompt %r states nothing the evaluator knows (%s): its images are not filtered", prompt,
                    list(class_names))
    return expected


def load_filter(evaluator: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
                device: str | torch.device = "cpu") -> PromptConsistencyFilter:
    """The filter with a saved cxrgen-evaluator (None: the shipped one)."""
    return PromptConsistencyFilter(CXREvaluator.from_pretrained(evaluator or DEFAULT_EVALUATOR, device=device),
                                   threshold)


def run_generate_filtered(*args, evaluator: str | None = None, threshold: float = DEFAULT_THRESHOLD,
                          max_tries: int = DEFAULT_MAX_TRIES, **kwargs) -> GeneratedFiles:
    """``cxrgen generate --filter``: ``run_generate`` (same arguments) with the prompt-consistency filter."""
    return run_generate(*args, sample_filter=load_filter(evaluator, threshold), max_tries=max_tries, **kwargs)
