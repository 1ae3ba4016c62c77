"""End to end: a small pixel-space model trained on CPU on phantoms follows the prompt (side, size, negation).

The same trained model is then sampled with two deliberate mistakes (the prompt ignored; guidance
with the wrong sign), and a second model is trained on randomly flipped images: each mistake must
bring laterality below the pass mark, so the benchmark would catch it.

NOT YET PASSING, so the module runs only when CXRGEN_PHANTOM_E2E=1. With the default recipe (a
5-block 128-wide U-ViT, 6,000 phantoms x 4 reports, 2,500 steps: ~19 CPU minutes per model) the
benchmark's held-out laterality is 0.76 (w=3) / 0.79 (w=6), short of 0.85: lower-lobe
consolidations are mostly not drawn; held-out negation is 0.70-0.77. Two such models (the clean
one and the flipped one) also take ~2 x 19 minutes, over the 15-minute CI budget. See README,
"does the text control the image?".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import cxrgen.guidance
from cxrgen.phantom.control import control_benchmark
from cxrgen.phantom.recipe import PhantomRecipe, train_phantom_model
from cxrgen.pipeline import CXRPipeline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CXRGEN_PHANTOM_E2E") != "1",
                       reason="the phantom model does not yet reach the marks in held-out wordings (laterality "
                              "0.76-0.79 < 0.85) and two ~19-minute trainings exceed the CI budget; set "
                              "CXRGEN_PHANTOM_E2E=1 to run it"),
]

RECIPE = PhantomRecipe()
#: The flipped run uses the same recipe, so a laterality drop is the flip's doing, not a smaller budget's.
FLIP_RECIPE = RECIPE
LATERALITY_MIN, NEGATION_MIN, SIZE_SPEARMAN_MIN = 0.85, 0.85, 0.5
N_PER_PROMPT = 1
THREADS = 2  # the tiny U-ViT trains ~1.7x faster on 2 threads than on 1 (measured on the 2-core CI machine)


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, threads) -> CXRPipeline:
    summary = train_phantom_model(tmp_path_factory.mktemp("phantom_model"), RECIPE)
    return CXRPipeline.from_pretrained(summary["model_dir"])


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


def _bench(pipe: CXRPipeline) -> dict:
    return control_benchmark(pipe, n_per_prompt=N_PER_PROMPT, seed=0, progress=False)


def test_trained_model_follows_the_prompt(trained: CXRPipeline) -> None:
    result = _bench(trained)
    scores = {k: result[k] for k in ("laterality_acc", "negation_acc", "size_spearman", "presence_acc")}
    assert result["laterality_acc"] >= LATERALITY_MIN, scores
    assert result["negation_acc"] >= NEGATION_MIN, scores
    assert result["size_spearman"] >= SIZE_SPEARMAN_MIN, scores


def test_ignoring_the_prompt_is_caught(trained: CXRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    text = trained.text_encoder
    encode = text.encode  # encode_null calls encode: keep the original for the null prompt
    monkeypatch.setattr(text, "encode", lambda prompts: encode([text.config.null_prompt] * len(prompts)))
    assert _bench(trained)["laterality_acc"] < LATERALITY_MIN


def test_wrong_sign_guidance_is_caught(trained: CXRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_sign(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        return pred_uncond - guidance_scale * (pred_cond - pred_uncond)  # pushes away from the prompt

    monkeypatch.setattr(cxrgen.guidance, "combine", wrong_sign)
    assert _bench(trained)["laterality_acc"] < LATERALITY_MIN


def test_flip_augmentation_is_caught(tmp_path: Path, threads) -> None:
    summary = train_phantom_model(tmp_path, FLIP_RECIPE, wrap_dataset=lambda data: RandomlyFlipped(data, seed=0))
    result = _bench(CXRPipeline.from_pretrained(summary["model_dir"]))
    assert result["laterality_acc"] < LATERALITY_MIN
