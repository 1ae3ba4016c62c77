"""DenoiserConfig = registry name + shared fields + constructor ``kwargs``: YAML, overrides, earlier layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from cxrgen.config import DenoiserConfig, ModelConfig, TrainConfig, apply_overrides, load_config, save_config
from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.denoisers import build_denoiser, denoiser_kwargs
from cxrgen.errors import ConfigError
from cxrgen.pipeline import DEFAULT_MODEL

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "cxrgen" / "configs"


def test_kwargs_override_round_trip_and_stay_frozen(tmp_path: Path) -> None:
    cfg = apply_overrides(TrainConfig(), ["model.denoiser.name=unet-tiny", "model.denoiser.sample_size=8",
                                          "model.denoiser.context_dim=16",
                                          "model.denoiser.kwargs.block_out_channels=[16, 32]",
                                          "model.denoiser.kwargs.norm_num_groups=8"])
    den = cfg.model.denoiser
    assert den.kwargs == {"block_out_channels": (16, 32), "norm_num_groups": 8} and hash(cfg.model)
    with pytest.raises(TypeError):
        den.kwargs["layers_per_block"] = 2  # type: ignore[index]
    path = save_config(cfg, tmp_path / "train.yaml")
    written = yaml.safe_load(path.read_text())["model"]["denoiser"]["kwargs"]
    assert written == {"block_out_channels": [16, 32], "norm_num_groups": 8}
    assert load_config(TrainConfig, path) == cfg
    unet = build_denoiser(den)
    assert list(unet.config.block_out_channels) == [16, 32] and unet.config.norm_num_groups == 8
    assert len(unet.config.down_block_types) == 2  # the SD block layout follows the levels asked for


def test_set_one_kwarg_of_a_yaml_keeps_the_others() -> None:
    cfg = load_config(TrainConfig, CONFIGS / "cxr256-gpu.yaml", ["model.denoiser.kwargs.patch_size=4"])
    kwargs = denoiser_kwargs(cfg.model.denoiser)
    assert (kwargs["patch_size"], kwargs["hidden_size"], kwargs["num_heads"]) == (4, 256, 4)
    assert denoiser_kwargs(DenoiserConfig(name="uvit-s"))["hidden_size"] == 512  # the preset the YAML overrides


def test_a_flat_override_points_to_kwargs() -> None:
    with pytest.raises(ConfigError, match=r"model\.denoiser\.kwargs\.patch_size=\.\.\."):
        apply_overrides(TrainConfig(), ["model.denoiser.patch_size=2"])
    with pytest.raises(ConfigError, match="did you mean 'model.denoiser.sample_size'"):
        apply_overrides(TrainConfig(), ["model.denoiser.sample_sise=2"])


def test_the_earlier_flat_layout_is_read_as_kwargs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = {"denoiser": {"name": "uvit-tiny", "sample_size": 16, "hidden_size": None, "depth": 5, "patch_size": 4,
                        "time_embed": "identity", "pos_embed": "learned", "block_out_channels": None}}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.INFO, logger="cxrgen.config.models"):
        cfg = load_config(ModelConfig, path)
    assert cfg.denoiser.kwargs == {"depth": 5, "patch_size": 4, "time_embed_type": "identity"}  # None: the preset's
    assert "denoiser.kwargs" in caplog.text and "earlier flat fields" in caplog.text
    old["denoiser"].update(pos_embed="sincos", hidden_size=64)
    path.write_text(yaml.safe_dump(old))
    model = build_denoiser(load_config(ModelConfig, path).denoiser)
    assert (model.config.pos_embed_type, model.config.hidden_size, model.config.depth) == ("sincos", 64, 5)


def test_the_shipped_training_record_names_the_shipped_architecture() -> None:
    cfg = load_config(TrainConfig, DEFAULT_MODEL / TRAIN_CONFIG_NAME)
    saved = json.loads((DEFAULT_MODEL / "denoiser" / "config.json").read_text())
    kwargs = denoiser_kwargs(cfg.model.denoiser)
    assert saved["_class_name"] == "UViT" and {k: saved[k] for k in kwargs} == kwargs
