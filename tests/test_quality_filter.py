"""Quality filter: prompt labels vs evaluator probabilities, rejection and deterministic redraws in generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import PROMPTS, tiny_pipeline

from cxrgen.cli import main
from cxrgen.config import EvaluatorConfig, ImageConfig, SamplingConfig
from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.quality_filter import PromptConsistencyFilter, prompt_expectations
from cxrgen.generate import FILTER_SUMMARY_NAME, generate_images, retry_seed
from cxrgen.pipeline import CXRPipeline

SAMPLING = SamplingConfig(sampler="ddim", steps=2, guidance_scale=3.0)
CLASSES = ("No Finding", "Pneumonia")
SEED = 5


def forced_evaluator(no_finding_logit: float, pneumonia_logit: float = 0.0) -> CXREvaluator:
    """A tiny evaluator whose probabilities ignore the image: sigmoid of the given logits."""
    torch.manual_seed(0)  # test-side seeding of a random tiny network
    evaluator = CXREvaluator(EvaluatorConfig(arch="densenet-tiny", class_names=CLASSES, image=ImageConfig(size=32)))
    with torch.no_grad():
        evaluator.net.classifier.weight.zero_()
        evaluator.net.classifier.bias.copy_(torch.tensor([no_finding_logit, pneumonia_logit]))
    return evaluator.eval()


class RejectFirstDraws:
    """A filter that rejects every image of the first ``n`` judge calls, then accepts."""

    name = "reject-first"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def judge(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((images.shape[0],), 1.0 if self.calls <= self.n else -1.0)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> CXRPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("filter"), SAMPLING)


def _run(pipe: CXRPipeline, out: Path, **kw):
    args = dict(n_per_prompt=2, sampling=SAMPLING, seed=SEED, model_name="tiny", batch_size=2, progress=False)
    return generate_images(pipe, PROMPTS, out, **{**args, **kw})


def test_prompt_expectations_use_labeler_certainty_and_evaluator_classes() -> None:
    classes = ("No Finding", "Pneumonia", "Pneumothorax")
    assert prompt_expectations("Large left pneumothorax.", classes) == {"No Finding": 0.0, "Pneumothorax": 1.0}
    assert prompt_expectations("No pneumonia.", classes) == {"No Finding": 1.0, "Pneumonia": 0.0}
    assert prompt_expectations("Possible pneumonia.", classes) == {}  # uncertain: not checked
    assert prompt_expectations("Small left pleural effusion.", CLASSES) == {"No Finding": 0.0}  # implied


def test_judge_accepts_agreement_and_rejects_contradiction() -> None:
    images = torch.zeros(3, 1, 32, 32)
    says_normal = PromptConsistencyFilter(forced_evaluator(5.0, -5.0))
    assert (says_normal.judge("Normal chest radiograph.", images) <= 0).all()
    assert (says_normal.judge("Right lower lobe pneumonia.", images) > 0).all()
    assert (says_normal.judge("Possible pneumonia.", images) <= 0).all()  # nothing to check
    unsure = PromptConsistencyFilter(forced_evaluator(-1.0), threshold=0.2)  # p = 0.27: between 0.2 and 0.8
    assert (unsure.judge("Normal chest radiograph.", images) <= 0).all()
    with pytest.raises(ConfigError, match="threshold"):
        PromptConsistencyFilter(forced_evaluator(0.0), threshold=1.0)


def test_accepted_first_draws_are_the_unfiltered_images(pipe: CXRPipeline, tmp_path: Path) -> None:
    plain = _run(pipe, tmp_path / "plain")
    kept = _run(pipe, tmp_path / "filtered", sample_filter=RejectFirstDraws(0))
    assert [Image.open(p).tobytes() for p in plain] == [Image.open(p).tobytes() for p in kept]
    assert kept.filter_summary["acceptance_rate"] == 1.0 and kept.filter_summary["draws"] == len(kept)
    assert plain.filter_summary is None


def test_rejected_images_are_redrawn_deterministically(pipe: CXRPipeline, tmp_path: Path) -> None:
    first = _run(pipe, tmp_path / "a", sample_filter=RejectFirstDraws(1))  # first batch of prompt 0 rejected once
    text = Image.open(first[0]).text
    assert text["filter_tries"] == "2" and text["filter_accepted"] == "true"
    assert text["seed"] == str(retry_seed(SEED, 1)) and text["filter_slot_seed"] == str(SEED)
    assert Image.open(first[2]).text["filter_tries"] == "1"  # prompt 1 passed at once
    summary = json.loads((tmp_path / "a" / FILTER_SUMMARY_NAME).read_text())
    assert summary == first.filter_summary and summary["draws"] == 6 and summary["acceptance_rate"] == 4 / 6
    again = _run(pipe, tmp_path / "b", sample_filter=RejectFirstDraws(1))
    assert [Image.open(p).tobytes() for p in first] == [Image.open(p).tobytes() for p in again]
    # the recorded seed reproduces the accepted draw without the filter
    alone = generate_images(pipe, [PROMPTS[0]], tmp_path / "c", n_per_prompt=1, sampling=SAMPLING,
                            seed=int(text["seed"]), model_name="tiny", batch_size=1, progress=False)
    single = _run(pipe, tmp_path / "d", batch_size=1, sample_filter=RejectFirstDraws(1))
    assert Image.open(alone[0]).tobytes() == Image.open(single[0]).tobytes()


def test_all_rejected_keeps_the_least_contradicting_draw_and_resumes(pipe: CXRPipeline, tmp_path: Path) -> None:
    out = _run(pipe, tmp_path, sample_filter=RejectFirstDraws(100), max_tries=3)
    assert out.filter_summary["acceptance_rate"] == 0.0 and out.filter_summary["not_accepted"] == 4
    assert all(Image.open(p).text["filter_tries"] == "3" for p in out)
    assert all(Image.open(p).text["filter_accepted"] == "false" for p in out)
    assert Image.open(out[0]).text["seed"] == str(SEED)  # equal scores: the first draw is kept
    calls = RejectFirstDraws(0)
    resumed = _run(pipe, tmp_path, sample_filter=calls, max_tries=3)  # every file is there: nothing drawn
    assert calls.calls == 0 and resumed.filter_summary == out.filter_summary
    with pytest.raises(ConfigError, match="filter"):
        _run(pipe, tmp_path)  # unfiltered settings do not resume a filtered folder


def test_cli_filter_reports_the_acceptance_rate(pipe: CXRPipeline, tmp_path: Path, capsys) -> None:
    model = pipe.save_pretrained(tmp_path / "model")
    forced_evaluator(5.0).save_pretrained(tmp_path / "says-normal")  # P(No Finding) = 0.99 for any image
    args = ["generate", *PROMPTS, "--model", str(model), "-n", "1", "--seed", "0", "--device", "cpu",
            "--no-progress", "--filter", "--filter-evaluator", str(tmp_path / "says-normal"),
            "--filter-max-tries", "2", "--out"]
    assert main([*args, str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    # "small left pleural effusion" (No Finding implied absent) is rejected twice; "no acute disease" passes
    assert "acceptance rate 0.333 (1 accepted of 3 draws; 1 image(s) kept without passing" in printed
    assert Image.open(tmp_path / "out" / "00000_000.png").text["filter_accepted"] == "false"
    assert Image.open(tmp_path / "out" / "00001_000.png").text["filter_accepted"] == "true"
