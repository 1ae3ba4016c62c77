"""tools/ship_model.py: the training record of a shipped model, for a run from scratch and a fine-tuning stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cxrgen.integrity import verify_weights

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ship_model.py"


def _run_folder(root: Path, steps: int, wall_s: float) -> Path:
    (root / "model" / "denoiser").mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(root / "model" / "denoiser" / "model.safetensors"))
    (root / "metrics.json").write_text(json.dumps({"steps": steps, "images_seen": steps * 32, "wall_s": wall_s,
                                                   "final_loss": 0.5}))
    return root


def _ship(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_stages_add_up_and_keep_the_autoencoder(tmp_path: Path) -> None:
    ae = tmp_path / "ae"
    ae.mkdir()
    (ae / "metrics.json").write_text(json.dumps({"steps": 1200, "train_images": 4648, "scale": 0.26, "shift": 0.69,
                                                 "eval": {"psnr": 33.0, "ssim": 0.887}}))
    dest = tmp_path / "default"
    first = _ship(str(_run_folder(tmp_path / "run1", 600, 2742.0)), "--autoencoder", str(ae),
                  "--recipe", "stage 1", "--dest", str(dest))
    assert first.returncode == 0, first.stderr
    one = json.loads((dest / "training.json").read_text())
    assert one["steps"] == 600 and one["autoencoder"]["heldout"]["psnr"] == 33.0 and "stages" not in one
    second = _ship(str(_run_folder(tmp_path / "run2", 1200, 1900.0)), "--start-from", str(dest / "training.json"),
                   "--recipe", "stage 1 + stage 2", "--dest", str(dest), "--fp16-denoiser")
    assert second.returncode == 0, second.stderr
    two = json.loads((dest / "training.json").read_text())
    assert [s["recipe"] for s in two["stages"]] == ["stage 1", "stage 1 + stage 2"]
    assert two["steps"] == 1800 and two["images_seen"] == 1800 * 32 and two["wall_s"] == 2742.0 + 1900.0
    assert two["autoencoder"] == one["autoencoder"] and two["weights_bytes"] > 0
    assert load_file(str(dest / "denoiser" / "model.safetensors"))["w"].dtype == torch.float16
    assert two["denoiser_weights_dtype"] == "float16" and one["denoiser_weights_dtype"] == "float32"
    assert verify_weights(dest) == ["denoiser/model.safetensors"]  # the record matches the halved weights
    both = _ship(str(tmp_path / "run2"), "--autoencoder", str(ae), "--start-from", str(dest / "training.json"),
                 "--recipe", "x", "--dest", str(dest))
    assert both.returncode != 0 and "not both" in both.stderr
