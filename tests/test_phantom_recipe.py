"""The phantom training recipe (tiny run) and the README grid figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrgen.config import PhantomConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.phantom import PhantomFindings, render
from cxrgen.phantom.grid import CELL, describe, phantom_grid
from cxrgen.phantom.measure import measure
from cxrgen.phantom.recipe import (
    PhantomImages,
    PhantomRecipe,
    phantom_train_config,
    phantom_training_set,
    train_phantom_model,
)
from cxrgen.pipeline import CXRPipeline

TINY = PhantomRecipe(n_images=12, text_backend="scratch", vocab_size=300, steps=2, batch_size=4,
                     sampling_steps=2, warmup_steps=0)


class LengthEncoder:
    """Stands in for a frozen encoder: context (B, 4, 2) = the prompt's length everywhere, so an item's
    context can be matched to its prompt."""

    def encode(self, prompts):
        lengths = torch.tensor([float(len(p)) for p in prompts])
        return lengths[:, None, None].expand(-1, 4, 2), torch.ones(len(prompts), 4, dtype=torch.bool)

    def encode_all(self, prompts, batch_size=256):
        return self.encode(prompts)


def test_tiny_recipe_trains_a_pixel_model_and_draws_the_grid(tmp_path: Path) -> None:
    summary = train_phantom_model(tmp_path, TINY)
    assert summary["steps"] == 2
    data = PhantomImages(tmp_path / "data" / "phantoms.csv", dataclasses.replace(
        phantom_train_config(TINY, tmp_path / "x", tokenizer_dir=tmp_path / "tokenizer").image))
    item = data[0]
    assert item["image"].shape == (1, 32, 32) and item["prompt"] and "context" not in item
    pipe = CXRPipeline.from_pretrained(summary["model_dir"])
    assert pipe.autoencoder.downsample_factor == 1 and pipe.denoiser.config.patch_size == TINY.patch_size
    prompts = ["Large left pleural effusion.", "Unremarkable chest radiograph."]
    lines = phantom_grid(pipe, prompts, tmp_path / "grid.png")
    assert len(lines) == 2 and all(line.startswith("measured:") for line in lines)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[1] == 2 * CELL


def test_runs_share_a_training_set_and_continue_a_saved_model(tmp_path: Path) -> None:
    recipe = dataclasses.replace(TINY, text_backend="minilm")
    shared = phantom_training_set(tmp_path / "shared", recipe)
    assert shared.context_dim == 384 and shared.data.context[0].shape[-1] == 384
    first = train_phantom_model(tmp_path / "first", recipe, training_set=shared)
    assert not (tmp_path / "first" / "data").exists()  # nothing rendered or encoded again
    still = dataclasses.replace(recipe, pretrained=first["model_dir"], steps=1, lr=1e-12)  # continue, barely move
    second = train_phantom_model(tmp_path / "second", still, training_set=shared)
    a, b = (CXRPipeline.from_pretrained(s["model_dir"]).denoiser.state_dict() for s in (first, second))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # started from the first model's weights
    with pytest.raises(ConfigError, match="another recipe"):
        train_phantom_model(tmp_path / "x", dataclasses.replace(recipe, n_images=13), training_set=shared)
    with pytest.raises(ConfigError, match="frozen text encoder"):
        train_phantom_model(tmp_path / "y", dataclasses.replace(TINY, pretrained=first["model_dir"]))


def test_frozen_text_features_are_precomputed_per_item(tmp_path: Path) -> None:
    from cxrgen.phantom import write_phantom_set

    table = write_phantom_set(3, 32, tmp_path, progress=False)

    data = PhantomImages(table, phantom_train_config(PhantomRecipe(), tmp_path).image, text_encoder=LengthEncoder())
    assert data[2]["context"].shape == (4, 2) and float(data[2]["context"][0, 0]) == len(data[2]["prompt"])
    cfg = phantom_train_config(PhantomRecipe(), tmp_path / "run", context_dim=384)
    assert cfg.model.text_encoder.backend == "minilm" and not cfg.model.text_encoder.trainable
    assert cfg.model.denoiser.context_dim == 384 and cfg.model.autoencoder.kind == "identity"
    with pytest.raises(DataError, match="cxrgen phantom"):
        PhantomImages(tmp_path / "missing.csv", cfg.image)


def test_prompt_variants_reword_the_same_truth(tmp_path: Path) -> None:
    import pandas as pd

    from cxrgen.phantom import write_phantom_set
    from cxrgen.phantom.control import negated_findings

    table = write_phantom_set(20, 32, tmp_path, progress=False)
    rows = pd.read_csv(table)

    image_cfg = phantom_train_config(PhantomRecipe(), tmp_path).image
    data = PhantomImages(table, image_cfg, text_encoder=LengthEncoder(), prompts_per_image=4, seed=1)
    assert len(data.all_prompts()) == 80 and data.context_row.shape == (20, 4)
    assert data.context[0].shape == (len(set(data.all_prompts())), 4, 2)  # each distinct report encoded once
    torch.manual_seed(0)
    for i, row in enumerate(rows.to_dict("records")):
        truth = PhantomFindings.from_row(row)
        assert truth.to_row() == PhantomFindings(**{k: row[k] for k in truth.to_row() if k != "cardiomegaly"}).to_row()
        variants = data.all_prompts()[4 * i:4 * i + 4]
        assert variants[0] == row["prompt"]  # the table's own report first
        for text in variants:  # every rewording names the truth's sides and negates nothing present
            low = text.lower()
            if truth.effusion_side in ("right", "left") and truth.pneumothorax_side == "none":
                other = "left" if truth.effusion_side == "right" else "right"
                assert truth.effusion_side in low and (other in low) == (other in truth.consolidation_lobe), text
            assert not negated_findings(text) & truth.present, text
        seen = {data[i]["prompt"] for _ in range(30)}
        assert seen <= set(variants) and len(seen) >= min(2, len(set(variants)))
        item = data[i]
        assert float(item["context"][0, 0]) == len(item["prompt"])
    assert len({p for p in data.all_prompts()}) > len(set(rows["prompt"]))  # more wordings than the table
    again = PhantomImages(table, image_cfg, prompts_per_image=4, seed=1)
    assert again.all_prompts() == data.all_prompts()  # seeded by (seed, row, variant)
    with pytest.raises(ConfigError, match="prompts_per_image"):
        PhantomImages(table, image_cfg, prompts_per_image=0)


def test_describe_reads_measured_findings() -> None:
    f = PhantomFindings(effusion_side="left", effusion_size="large")
    line = describe(measure(render(f, 64, np.random.default_rng(0))))
    assert "effusion left large" in line and "ptx none" in line
    assert "not measurable" in describe(None)


def test_recipe_findings_switch_the_others_off() -> None:
    from cxrgen.phantom.findings import sample_findings
    from cxrgen.phantom.recipe import phantom_config

    cfg = phantom_config(dataclasses.replace(PhantomRecipe(), findings=("effusion",)))
    assert cfg.pneumothorax_prob == cfg.consolidation_prob == cfg.cardiomegaly_prob == 0.0
    assert cfg.effusion_prob == PhantomConfig().effusion_prob and cfg.size == PhantomRecipe.image_size
    rng = np.random.default_rng(0)
    drawn = [sample_findings(rng, cfg) for _ in range(200)]
    assert all(f.present <= {"effusion"} for f in drawn) and any(f.present for f in drawn)
    with pytest.raises(ConfigError, match="findings"):
        phantom_config(dataclasses.replace(PhantomRecipe(), findings=("fracture",)))
