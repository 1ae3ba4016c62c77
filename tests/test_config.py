"""Config dataclasses: YAML round trip, checked overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrgen.config import DataConfig, PromptConfig, apply_overrides, load_config, save_config, to_dict
from cxrgen.errors import ConfigError


def test_defaults_follow_roentgen() -> None:
    cfg = DataConfig()
    assert cfg.prompt.section == "impression" and cfg.prompt.min_chars == 7
    assert cfg.prompt.max_tokens == 77
    assert (cfg.image.low, cfg.image.high) == (-1.0, 1.0)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(DataConfig(), ["prompt.section=both", "split.seed=7", "views=[PA, AP]"])
    path = save_config(cfg, tmp_path / "c.yaml")
    again = load_config(DataConfig, path)
    assert again == cfg and again.views == ("PA", "AP")
    assert to_dict(again)["prompt"]["section"] == "both"


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        DataConfig().prompt.section = "findings"  # type: ignore[misc]


def test_unknown_override_names_valid_fields() -> None:
    with pytest.raises(ConfigError, match="valid here: .*max_tokens"):
        apply_overrides(DataConfig(), ["prompt.max_token=10"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(DataConfig(), ["prompt.section"])


def test_unknown_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("prompt:\n  sektion: findings\n")
    with pytest.raises(ConfigError, match="prompt.sektion"):
        load_config(DataConfig, path)


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match="impression, findings or both"):
        PromptConfig(section="summary")
    with pytest.raises(ConfigError, match="sum to 1"):
        apply_overrides(DataConfig(), ["split.train=0.9"])
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(DataConfig(), ["image.size=big"])


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DataConfig, "/nonexistent/c.yaml")
