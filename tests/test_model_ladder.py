"""The model rungs of the sanity ladder on a tiny random pipeline: shapes, range, what each rung is."""

from __future__ import annotations

import torch
from tiny_models import tiny_pipeline

from cxrgen.evaluate.ladder import is_ordered
from cxrgen.evaluate.model_ladder import MODEL_RUNGS, autoencode, model_rungs
from cxrgen.pipeline import load_pipeline


def test_model_rungs_on_a_tiny_pipeline(tmp_path) -> None:
    model_dir = str(tiny_pipeline(tmp_path).save_pretrained(tmp_path / "model"))
    held = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["Normal chest.", "Left pleural effusion.", "Cardiomegaly."]
    rungs = model_rungs(model_dir, held, prompts, torch.Generator().manual_seed(0))
    assert tuple(rungs) == MODEL_RUNGS and rungs["heldout"] is held
    for name, x in rungs.items():
        assert x.shape == held.shape and x.min() >= -1 and x.max() <= 1, name
    assert torch.equal(rungs["autoencoder"], autoencode(load_pipeline(model_dir), held))  # posterior mean: no draw
    assert not torch.allclose(rungs["default_model"], rungs["untrained_denoiser"])  # other denoiser weights
    again = model_rungs(model_dir, held, prompts, torch.Generator().manual_seed(0))
    assert all(torch.equal(again[k], rungs[k]) for k in MODEL_RUNGS)  # seeded, and the shipped weights untouched
    assert is_ordered({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}, rungs=("a", "b", "c", "d", "e"))
