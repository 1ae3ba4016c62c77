"""The model rungs of the sanity ladder and the barely trained run, on a tiny random pipeline."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model_config, tiny_pipeline

from cxrgen.config import TrainConfig, load_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.errors import ConfigError
from cxrgen.evaluate.ladder import is_ordered, is_ranked_to_ceiling
from cxrgen.evaluate.model_ladder import MODEL_RUNGS, ModelLadderSettings, model_rungs
from cxrgen.pipeline import DEFAULT_MODEL, load_pipeline
from cxrgen.train.short_run import model_recipe, train_from_scratch

SETTINGS = ModelLadderSettings(sampler_steps=2)
PROMPTS = ["Normal chest.", "Left pleural effusion.", "Cardiomegaly."]


def test_model_rungs_and_the_barely_trained_run_on_a_tiny_pipeline(tmp_path) -> None:
    pipe = tiny_pipeline(tmp_path)
    model_dir = str(pipe.save_pretrained(tmp_path / "model"))
    recipe = TrainConfig(model=tiny_model_config(tmp_path / "bert"), batch_size=32, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    held, train = (torch.rand(n, 1, 24, 24, generator=g) * 2 - 1 for n in (3, 4))

    def rungs_in(folder: str) -> dict[str, torch.Tensor]:
        barely = train_from_scratch(model_dir, train, PROMPTS + ["No finding."], tmp_path / folder, 3, 2, recipe=recipe)
        return model_rungs(model_dir, barely, held, PROMPTS, torch.Generator().manual_seed(0), SETTINGS)

    rungs = rungs_in("barely")
    assert tuple(rungs) == MODEL_RUNGS and rungs["heldout"] is held
    for name, x in rungs.items():
        assert x.shape == held.shape and x.min() >= -1 and x.max() <= 1, name
    assert not torch.allclose(rungs["blur_noise"], held)
    assert not torch.allclose(rungs["default_model"], rungs["barely_trained"])  # other denoiser weights
    run = load_config(TrainConfig, tmp_path / "barely" / TRAIN_CONFIG_NAME)
    assert (run.steps, run.batch_size, run.lr, run.model.denoiser.pretrained) == (3, 2, 1e-3, None)  # the recipe, cut
    barely = load_pipeline(tmp_path / "barely" / "model")
    assert any(not torch.equal(a, b) for a, b in zip(barely.denoiser.state_dict().values(),
                                                       pipe.denoiser.state_dict().values(), strict=True))
    again = rungs_in("barely-again")
    assert all(torch.equal(again[k], rungs[k]) for k in MODEL_RUNGS)  # seeded, and the shipped weights untouched


def test_the_recipe_is_the_model_folders_own(tmp_path) -> None:
    assert model_recipe(None) == load_config(TrainConfig, DEFAULT_MODEL / TRAIN_CONFIG_NAME)
    model_dir = str(tiny_pipeline(tmp_path).save_pretrained(tmp_path / "model"))
    with pytest.raises(ConfigError, match="recipe"):
        model_recipe(model_dir)
    with pytest.raises(ConfigError, match="one prompt per image"):
        train_from_scratch(model_dir, torch.zeros(2, 1, 8, 8), ["one"], tmp_path / "run", 1,
                           recipe=TrainConfig(model=tiny_model_config(tmp_path / "bert")))


def test_ladder_orders() -> None:
    rungs = ("a", "b", "c", "d", "e")
    assert is_ordered({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}, rungs=rungs)
    assert not is_ordered({"a": 0, "b": 2, "c": 1, "d": 3, "e": 4}, rungs=rungs)
    accuracy = {"a": 0.5, "b": 0.7, "c": 0.9, "d": 1.0, "e": 1.0}
    assert is_ranked_to_ceiling(accuracy, rungs) and not is_ordered(accuracy, rungs=rungs)
    assert not is_ranked_to_ceiling(accuracy | {"c": 0.7}, rungs)  # a tie below the ceiling
    assert not is_ranked_to_ceiling(accuracy | {"d": 0.99, "e": 0.985}, rungs, ceiling=0.99)
