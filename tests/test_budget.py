"""The budget study script on a tiny config and a few-second budget: arms train for equal clock time and are scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from script_loader import load_script
from train_helpers import PROMPTS, tiny_config_dict

from cxrgen.config import TrainConfig
from cxrgen.errors import ConfigError
from cxrgen.pipeline import CXRPipeline

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "budget.py"


def _budget():
    return load_script(SCRIPT)


def _budget_arm():
    _budget()
    import budget_arm

    return budget_arm


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


def _tiny_study_config(tmp_path: Path) -> Path:
    data = tiny_config_dict(tmp_path, warmup_steps=0)
    data["manifests"] = [str(_manifest_with_heldout(tmp_path))]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.mark.slow  # ~15-25 s: two tiny arms trained 1 s each and scored twice, the reference scored once
def test_budget_study_trains_for_the_budget_and_writes_json_table_plot(tmp_path: Path) -> None:
    budget = _budget()
    config, out = _tiny_study_config(tmp_path), tmp_path / "study"
    common = ["--config", str(config), "--n-eval", "8", "--sample-steps", "2", "--c2st-epochs", "1", "--out", str(out)]
    budget.main(["--arms", "flow", "--budget-s", "1.0", "--eval-at", "0.5,1.0", *common])
    report = budget.main(["--arms", "base128", "--budget-s", "1.0", "--eval-at", "1.0", *common,
                          "--reference-model", str(out / "flow" / "model"), "--reference-name", "v1"])
    assert list(report["arms"]) == ["v1", "flow", "base128"]  # every record under OUT, the reference first
    first, last = report["arms"]["flow"]
    assert [p["budget_s"] * s for p, s in ((first, 0.5), (last, 1.0))] == [0.5, 1.0]
    assert 0.5 <= first["clock_s"] < last["clock_s"] and last["clock_s"] >= 1.0  # the budget was spent
    assert last["steps"] > first["steps"] >= 1 and last["n"] == 8 and last["eval_cpu_s"] > 0
    assert 0.0 <= last["c2st_linear"] <= 1.0 and last["swd"] > 0 and last["loss_null"] > 0
    assert last["sampler"] == "flow-euler" and report["arms"]["v1"][0]["sampler"] == "flow-euler"
    half = report["arms"]["base128"][-1]
    assert (half["model_size"], half["scored_size"]) == (16, 32)  # sampled at half size, scored at full
    assert CXRPipeline.from_pretrained(out / "flow" / "model").denoiser.prediction_type == "flow_prediction"
    assert (out / "flow" / first["checkpoint"]).is_dir() and (out / "flow" / last["checkpoint"]).is_dir()
    written = json.loads((out / "budget.json").read_text())
    assert [r["arm"] for r in written["table"]] == ["v1", "flow", "base128"]
    assert written["records"]["flow"]["stages"][0]["machine"]["cores"] >= 1
    table = (out / "budget.md").read_text()
    assert "| flow | 0.0" in table and "| v1 | - |" in table and "| base128 |" in table
    assert written["plot_arms"] and set(written["plot_arms"]) <= {"base128", "flow"}
    assert (out / "budget.png").is_file() or "matplotlib" in table
    (out / "budget.md").unlink()
    assert budget.main(["--report-only", "--out", str(out)])["table"] == written["table"]
    assert (out / "budget.md").read_text() == table
    for arm in ("v1", "flow", "base128"):  # the arm folders may vanish: budget.json alone rebuilds the report
        shutil.rmtree(out / arm)
    assert budget.main(["--report-only", "--out", str(out)])["table"] == written["table"]
    with pytest.raises(ConfigError, match="no arm records"):
        budget.main(["--report-only", "--out", str(tmp_path)])


def _weights(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "denoiser" / "diffusion_pytorch_model.safetensors")


def test_an_arm_continued_in_stages_equals_one_run_and_keeps_its_curve(tmp_path: Path) -> None:
    budget, arm = _budget(), _budget_arm()
    config = _tiny_study_config(tmp_path)
    cfg = budget.arm_config(str(config), "maskdit", [], tmp_path / "cfg")
    fake = lambda model: {"swd": 1.0, "drawn": torch.rand(1).item()}  # noqa: E731 - scoring that draws RNG

    def record() -> dict:
        return arm.new_record("maskdit", "trained", "steps", arm.config_dict(cfg), [])

    whole = arm.train_arm(cfg, tmp_path / "whole", record(), 4, [0.5, 1.0], fake)
    staged = arm.train_arm(cfg, tmp_path / "staged", record(), 2, [1.0], fake)
    staged = arm.train_arm(cfg, tmp_path / "staged", arm.read_record(tmp_path / "staged"), 4, [0.5, 1.0], fake)
    assert [p["steps"] for p in whole["points"]] == [p["steps"] for p in staged["points"]] == [2, 4]
    assert [p["stage"] for p in staged["points"]] == [1, 2] and len(staged["stages"]) == 2
    assert staged["stages"][1]["resumed_from"] == staged["points"][0]["checkpoint"]
    assert (staged["stages"][1]["from_step"], staged["stages"][1]["to_step"]) == (2, 4)
    assert [p["loss"] for p in whole["points"]] == [p["loss"] for p in staged["points"]]
    one, two = _weights(tmp_path / "whole" / "model"), _weights(tmp_path / "staged" / "model")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)  # bit-identical EMA
    assert arm.read_record(tmp_path / "staged") == staged  # the record on disk is the returned one
    unchanged = arm.train_arm(cfg, tmp_path / "staged", staged, 4, [1.0], fake)  # the budget is already spent
    assert len(unchanged["stages"]) == 2


def test_continuing_refuses_another_recipe_a_lost_checkpoint_and_a_silent_restart(tmp_path: Path) -> None:
    budget, arm = _budget(), _budget_arm()
    config = _tiny_study_config(tmp_path)
    cfg = budget.arm_config(str(config), "ddpm-x0", [], tmp_path / "cfg")
    done = arm.train_arm(cfg, tmp_path / "a", arm.new_record("ddpm-x0", "trained", "steps", arm.config_dict(cfg), []),
                         2, [1.0], lambda model: {"swd": 1.0})
    other = budget.arm_config(str(config), "ddpm-x0", ["lr=0.5"], tmp_path / "cfg")
    with pytest.raises(ConfigError, match=r"lr: 0.001 -> 0.5"):
        arm.train_arm(other, tmp_path / "a", done, 4, [1.0], lambda model: {})
    with pytest.raises(ConfigError, match="same clock"):
        arm.train_arm(cfg, tmp_path / "a", done, 4, [1.0], lambda model: {}, clock="cpu")
    shutil.rmtree(tmp_path / "a" / done["points"][-1]["checkpoint"])
    with pytest.raises(ConfigError, match="is gone"):
        arm.train_arm(cfg, tmp_path / "a", done, 4, [1.0], lambda model: {})
    study = tmp_path / "study"
    arm.write_record(study / "ddpm-x0", done)
    with pytest.raises(ConfigError, match="--continue"):
        budget.main(["--config", str(config), "--arms", "ddpm-x0", "--clock", "steps", "--budget-s", "2",
                     "--n-eval", "8", "--out", str(study)])


def test_every_arm_is_a_valid_config_of_the_shipped_recipe(tmp_path: Path) -> None:
    budget = _budget()
    for arm in budget.ARMS:
        cfg = budget.arm_config(budget.BASE_CONFIG, arm, [], tmp_path / arm)
        assert isinstance(cfg, TrainConfig) and cfg.out_dir == str(tmp_path / arm)
    assert budget.arm_config(budget.BASE_CONFIG, "flow", [], tmp_path).objective.kind == "flow"
    with pytest.raises(ConfigError):
        budget.arm_config(budget.BASE_CONFIG, "ddpm-x0", ["objective.kind=flow"], tmp_path)
    half = budget.arm_config(budget.BASE_CONFIG, "base128", [], tmp_path)
    assert (half.model.image_size, half.model.denoiser.sample_size, half.image.size) == (128, 16, 128)
    assert budget.arm_overrides("base128", ["a=1"], ["base128:cache_dir=c128", "flow:b=2"]) == ["a=1", "cache_dir=c128"]
    with pytest.raises(ConfigError, match="ARM:key=value"):
        budget.arm_overrides("flow", [], ["cache_dir=c"])
    assert PROMPTS  # the tiny data's prompts are what the held-out rows carry


def test_the_plot_shows_the_best_two_arms_trained_longest_by_swd() -> None:
    budget = _budget()

    def rec(kind: str, *points: tuple[float, float]) -> dict:
        return {"kind": kind, "points": [{"clock_s": c, "swd": w} for c, w in points]}

    records = {"v1": rec("reference", (0.0, 10.0)), "a": rec("trained", (360, 150.0), (720, 120.0)),
               "b": rec("trained", (720, 110.0)), "c": rec("trained", (700, 130.0)),
               "stopped": rec("trained", (180, 90.0))}  # best SWD, but after a quarter of the budget only
    assert budget.best_arms(records) == ["b", "a"] and budget.best_arms(records, 3) == ["b", "a", "c"]
    assert budget.best_arms({"v1": records["v1"]}) == []
