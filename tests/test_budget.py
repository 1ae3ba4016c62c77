"""The budget study script on a tiny config and a few-second budget: arms train for equal clock time and are scored."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import PROMPTS, tiny_config_dict

from cxrgen.config import TrainConfig
from cxrgen.errors import ConfigError
from cxrgen.pipeline import CXRPipeline

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "budget.py"


def _budget():
    spec = importlib.util.spec_from_file_location("budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["budget"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _manifest_with_heldout(root: Path) -> Path:
    """The tiny synthetic manifest's 8 rows twice: as 'test' (the held-out set) and as 'train'."""
    import pandas as pd

    table = pd.read_csv(root / "manifest.csv")
    table["split"] = "test"
    extra = table.copy()
    extra["split"] = "train"
    path = root / "with_test.csv"
    pd.concat([table, extra]).to_csv(path, index=False)
    return path


@pytest.mark.slow  # ~10-20 s: a tiny arm trained 1 s and scored twice
def test_budget_study_trains_for_the_budget_and_writes_json_table_plot(tmp_path: Path) -> None:
    budget = _budget()
    data = tiny_config_dict(tmp_path, warmup_steps=0)
    data["manifests"] = [str(_manifest_with_heldout(tmp_path))]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    report = budget.main(["--config", str(config), "--arms", "flow", "--budget-s", "1.0",
                          "--eval-at", "0.5,1.0", "--n-eval", "8", "--sample-steps", "2", "--c2st-epochs", "1",
                          "--out", str(out)])
    assert set(report["arms"]) == {"flow"}
    for points in report["arms"].values():
        assert [p["budget_share"] for p in points] == [0.5, 1.0]
        first, last = points
        assert 0.5 <= first["clock_s"] < last["clock_s"] and last["clock_s"] >= 1.0  # the budget was spent
        assert last["steps"] > first["steps"] >= 1 and last["n"] == 8
        assert 0.0 <= last["c2st_linear"] <= 1.0 and last["swd"] > 0 and last["loss_null"] > 0
    assert report["arms"]["flow"][-1]["sampler"] == "flow-euler"
    flow_model = CXRPipeline.from_pretrained(out / "flow" / "model")
    assert flow_model.denoiser.prediction_type == "flow_prediction"
    written = json.loads((out / "budget.json").read_text())
    assert [r["arm"] for r in written["table"]] == ["flow"]
    table = (out / "budget.md").read_text()
    assert table.startswith("| arm |") and "| flow |" in table
    assert (out / "budget.png").is_file() or "matplotlib" in table
    (out / "budget.md").unlink()
    assert budget.main(["--report-only", "--out", str(out)])["table"] == written["table"]
    assert (out / "budget.md").read_text() == table


def test_every_arm_is_a_valid_config_of_the_shipped_recipe(tmp_path: Path) -> None:
    budget = _budget()
    for arm in budget.ARMS:
        cfg = budget.arm_config(budget.BASE_CONFIG, arm, [], tmp_path / arm)
        assert isinstance(cfg, TrainConfig) and cfg.out_dir == str(tmp_path / arm)
    assert budget.arm_config(budget.BASE_CONFIG, "flow", [], tmp_path).objective.kind == "flow"
    with pytest.raises(ConfigError):
        budget.arm_config(budget.BASE_CONFIG, "ddpm-x0", ["objective.kind=flow"], tmp_path)
    assert PROMPTS  # the tiny data's prompts are what the held-out rows carry
