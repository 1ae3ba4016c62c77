"""Conditioning gain: held-out denoising loss with the report vs with the null prompt."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_pipeline
from torch import nn

from cxrgen.errors import DataError
from cxrgen.evaluate.conditioning import conditioning_gain

PROMPTS = ["Large left pleural effusion.", "No acute cardiopulmonary process.", "Right upper lobe pneumonia."]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("cond"))


def _images(pipe, n: int) -> torch.Tensor:
    return torch.rand((n, 1, pipe.image_size, pipe.image_size), generator=torch.Generator().manual_seed(1)) * 2 - 1


class Blind(nn.Module):
    """A denoiser that never reads its context (the bug the gain must expose)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.prediction_type = inner, inner.prediction_type

    def forward(self, z_t, t, context, mask=None):
        return self.inner(z_t, t, torch.zeros_like(context), torch.ones_like(mask))


def test_gain_is_exactly_zero_for_a_model_that_ignores_the_text(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "denoiser", Blind(pipe.denoiser))
    result = conditioning_gain(pipe, _images(pipe, 3), PROMPTS, n_timesteps=2)
    assert result["gain"] == 0.0 and result["loss_text"] == result["loss_null"] > 0


def test_gain_is_repeatable_and_text_dependent(pipe):
    a = conditioning_gain(pipe, _images(pipe, 3), PROMPTS, n_timesteps=2, seed=3)
    b = conditioning_gain(pipe, _images(pipe, 3), PROMPTS, n_timesteps=2, seed=3)
    assert a == b and a["n"] == 3
    assert a["loss_text"] != a["loss_null"]  # a random model still reads its context
    with pytest.raises(DataError, match="one report per image"):
        conditioning_gain(pipe, _images(pipe, 2), PROMPTS)
