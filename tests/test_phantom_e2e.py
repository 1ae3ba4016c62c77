"""End to end: a small pixel-space model trained on CPU on phantoms follows the prompt (side, size, negation).

One model is trained with the phantom recipe (~5 minutes on 2 cores) and scored with the control
benchmark (held-out wordings) against the issue's marks: laterality and negation >= 0.85, size
Spearman >= 0.5. It is then sampled with two deliberate mistakes (the prompt ignored; guidance with
the wrong sign), and continued for a few hundred steps on randomly flipped images (beside the same
continuation on the true images): each mistake must bring laterality below the mark, so the
benchmark catches it. See README, "does the text control the image?".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import cxrgen.guidance
from cxrgen.phantom.control import control_benchmark
from cxrgen.phantom.recipe import PhantomRecipe, PhantomTrainingSet, phantom_training_set, train_phantom_model
from cxrgen.pipeline import CXRPipeline

pytestmark = pytest.mark.slow

RECIPE = PhantomRecipe()
FLIP_STEPS = 300  # steps the clean model is trained further, on flipped or on true images
#: The issue's marks, on held-out wordings; every deliberate mistake must bring laterality below the first.
LATERALITY_MIN, NEGATION_MIN, SIZE_SPEARMAN_MIN = 0.85, 0.85, 0.5
#: Laterality the continuation on true images must keep above the one on flipped images (the flip, not
#: the extra training, is what erases it; measured 0.90 vs 0.45 with this recipe, 0.89 vs 0.34 with the last).
FLIP_GAP = 0.25
N_PER_PROMPT = 2  # 184 benchmark images for the clean model
MISTAKE_N_PER_PROMPT = 1  # 92 for each mistake: enough to see laterality fall far below the mark
THREADS = 2  # the tiny U-ViT trains ~1.6x faster on 2 threads than on 1 (measured on the 2-core CI machine)


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def training_set(tmp_path_factory, threads) -> PhantomTrainingSet:
    return phantom_training_set(tmp_path_factory.mktemp("phantom_data"), RECIPE)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, training_set: PhantomTrainingSet) -> str:
    return train_phantom_model(tmp_path_factory.mktemp("phantom_model"), RECIPE, training_set=training_set)["model_dir"]


@pytest.fixture(scope="module")
def trained(trained_dir: str) -> CXRPipeline:
    return CXRPipeline.from_pretrained(trained_dir)


class RandomlyFlipped(Dataset):
    """The training items, each mirrored left-right with probability 1/2 per draw: the bug being simulated."""

    def __init__(self, data: Dataset, seed: int) -> None:
        self.data = data
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.data[index])
        if torch.rand((), generator=self.generator) < 0.5:
            item["image"] = item["image"].flip(-1)  # (1, H, W) mirrored: ONLY here, to show it is caught
        return item


def _bench(pipe: CXRPipeline, n_per_prompt: int = MISTAKE_N_PER_PROMPT) -> dict:
    return control_benchmark(pipe, n_per_prompt=n_per_prompt, seed=0, progress=False)


def _scores(result: dict) -> dict:
    return {k: round(result[k], 3) for k in ("laterality_acc", "negation_acc", "size_spearman", "presence_acc")}


@pytest.fixture(scope="module")
def clean(trained: CXRPipeline) -> dict:
    return _bench(trained, N_PER_PROMPT)


def test_trained_model_reaches_the_issue_marks(clean: dict) -> None:
    print(f"clean model: {_scores(clean)}")  # shown by pytest -rA
    assert clean["laterality_acc"] >= LATERALITY_MIN, _scores(clean)
    assert clean["negation_acc"] >= NEGATION_MIN, _scores(clean)
    assert clean["size_spearman"] >= SIZE_SPEARMAN_MIN, _scores(clean)


def test_ignoring_the_prompt_is_caught(trained: CXRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    text = trained.text_encoder
    encode = text.encode  # encode_null calls encode: keep the original for the null prompt
    monkeypatch.setattr(text, "encode", lambda prompts: encode([text.config.null_prompt] * len(prompts)))
    result = _bench(trained)
    print(f"null prompt: {_scores(result)}")
    assert result["laterality_acc"] < LATERALITY_MIN, _scores(result)


def test_wrong_sign_guidance_is_caught(trained: CXRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_sign(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        return pred_uncond - guidance_scale * (pred_cond - pred_uncond)  # pushes away from the prompt

    monkeypatch.setattr(cxrgen.guidance, "combine", wrong_sign)
    result = _bench(trained)
    print(f"wrong-sign guidance: {_scores(result)}")
    assert result["laterality_acc"] < LATERALITY_MIN, _scores(result)


def test_flip_augmentation_is_caught(tmp_path: Path, trained_dir: str, training_set: PhantomTrainingSet) -> None:
    """Training on randomly flipped images erases laterality; the same training on the true images keeps it.

    Both continue the clean model for FLIP_STEPS (cheaper than two models from scratch), so the drop is
    the flip's doing, not the extra training's.
    """
    recipe = dataclasses.replace(RECIPE, pretrained=trained_dir, steps=FLIP_STEPS)
    scores = {}
    for name, wrap in (("clean", None), ("flipped", lambda data: RandomlyFlipped(data, seed=0))):
        summary = train_phantom_model(tmp_path / name, recipe, wrap_dataset=wrap, training_set=training_set)
        scores[name] = _bench(CXRPipeline.from_pretrained(summary["model_dir"]))["laterality_acc"]
    print(f"laterality after {FLIP_STEPS} more steps: {scores}")
    assert scores["flipped"] < LATERALITY_MIN, scores
    assert scores["clean"] - scores["flipped"] >= FLIP_GAP, scores
