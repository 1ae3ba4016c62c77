"""The GPU sprint script on the CPU: a tiny model within a 1-minute budget writes a loadable model and sprint.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from script_loader import load_script
from train_helpers import tiny_config_dict

from cxrgen.pipeline import CXRPipeline

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sprint.py"


def _sprint():
    return load_script(SCRIPT)


def test_sprint_trains_within_budget_and_writes_model_report_grid(tmp_path: Path) -> None:
    sprint = _sprint()
    config = tmp_path / "tiny.yaml"
    data = tiny_config_dict(tmp_path, mixed_precision="bf16", num_workers=0, warmup_steps=50, ema_decay=0.9999,
                            validation_prompts=["no finding"])
    config.write_text(yaml.safe_dump(data))
    budget = 60.0  # the 1-minute CPU budget
    t0 = time.perf_counter()
    report = sprint.main(["--out", str(tmp_path / "sprint"), "--config", str(config), "--budget-s", str(budget),
                          "--warmup-steps", "3", "--sample-batch", "8", "--sample-steps", "2"])
    wall = time.perf_counter() - t0
    assert wall <= budget * 1.1 and report["elapsed_s"] <= budget * 1.1
    written = json.loads((tmp_path / "sprint" / "sprint.json").read_text())
    assert written["steps"] == written["plan"]["planned_steps"] > written["plan"]["warmup_steps"]
    assert written["device"] == "cpu" and written["train_mfu"] is None and written["sample_mfu"] is None
    assert written["config"]["mixed_precision"] == "no"  # bf16 autocast only on the GPU
    assert written["config"]["ema_decay"] < 0.9999  # EMA horizon shortened to the sprint's steps
    assert written["train_images_per_s"] > 0 and written["train_tflops"] > 0
    if written["sampling"] is None:  # a slow machine left too little of the budget: skipped, and said so
        assert any(note.startswith("sampling benchmark skipped") for note in written["notes"])
    else:
        assert written["sampling"]["images_per_s"] > 0 and written["sampling"]["gflops_per_image"] > 0
        assert (tmp_path / "sprint" / "samples.png").is_file()
    assert written["train_tflops"] == pytest.approx(3 * written["gflops_forward"] * written["train_images_per_s"] / 1e3)
    assert len(written["losses"]) >= 2
    assert not (tmp_path / "sprint" / "warmup").exists()
    pipe = CXRPipeline.from_pretrained(written["model_dir"])
    assert pipe.denoiser.config.sample_size == data["model"]["denoiser"]["sample_size"]


def test_mfu_uses_the_chip_table_and_is_null_without_a_peak() -> None:
    sprint = _sprint()
    assert sprint.peak_tflops("NVIDIA H200", None) == 989.0
    assert sprint.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert sprint.peak_tflops("Mystery chip", None) is None
    assert sprint.peak_tflops("Mystery chip", 100.0) == 100.0
    assert sprint.mfu(494.5e12, 989.0) == pytest.approx(0.5)
    assert sprint.mfu(1e12, None) is None


def test_sprint_refuses_a_budget_too_short_to_train(tmp_path: Path) -> None:
    sprint = _sprint()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, num_workers=0)))
    with pytest.raises(TimeoutError, match="no time left"):
        sprint.main(["--out", str(tmp_path / "sprint"), "--config", str(config), "--budget-s", "0.01",
                     "--warmup-steps", "1"])
