"""The shipped default model still draws the recorded pixels (fixture: tests/default_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from default_reference import FIXTURE, sample_reference, summarize
from diffusers import DiffusionPipeline

from cxrgen.generate import DEFAULT_MODEL
from cxrgen.pipeline import CXRPipeline

TOLERANCE = 1e-4  # max abs pixel difference on the [-1, 1] scale


@pytest.mark.slow
def test_default_model_reproduces_the_recorded_pixels() -> None:
    """diffusers' own loader gives a CXRPipeline that draws the pixels recorded before the format change."""
    pipe = DiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    assert isinstance(pipe, CXRPipeline)
    assert next(pipe.denoiser.parameters()).dtype == torch.float32  # stored float16, computed in float32

    def call(prompt: str, steps: int, generator: torch.Generator) -> torch.Tensor:
        return pipe([prompt], num_inference_steps=steps, generator=generator, progress=False).images

    got = summarize(sample_reference(call))
    want = np.load(FIXTURE)
    for key in ("pooled", "crops", "stats"):
        assert got[key].shape == want[key].shape, key
        diff = float(np.abs(got[key] - want[key]).max())
        assert diff <= TOLERANCE, f"{key}: max abs difference {diff:.2e} > {TOLERANCE}"
    # the fixture is not blank: the four images differ from each other (prompt and seed both matter)
    assert np.abs(want["pooled"][0] - want["pooled"][1]).mean() > 0.01
    assert np.abs(want["pooled"][0] - want["pooled"][2]).mean() > 0.01
