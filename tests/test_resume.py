"""Exact resume: a run interrupted after a checkpoint (in-process or SIGKILL) and resumed ends bit-identical."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_config, tiny_config_dict, write_config

from cxrgen.errors import ConfigError
from cxrgen.train import state
from cxrgen.train.checkpoint import (
    CHECKPOINTS_DIR,
    STAGING_PREFIX,
    checkpoint_name,
    list_checkpoints,
    read_state,
)
from cxrgen.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
KILL_TIMEOUT_S = 120


def _final_state(out: Path, step: int) -> dict[str, torch.Tensor]:
    """Denoiser, EMA (and joint text encoder) weights and optimizer moments of a checkpoint."""
    folder = out / CHECKPOINTS_DIR / checkpoint_name(step)
    tensors = {}
    for name in (state.DENOISER_FILE, state.EMA_FILE, state.TEXT_FILE):
        if (folder / name).is_file():
            tensors |= {f"{name}:{k}": v for k, v in load_file(str(folder / name)).items()}
    optim = read_state(folder / state.OPTIMIZER_FILE)["state"]
    tensors |= {f"adam:{i}:{k}": v for i, s in optim.items() for k, v in s.items()}
    return tensors


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def test_resume_in_process_is_bit_exact(tmp_path: Path) -> None:
    """Joint text encoder (dropout), warm-up + cosine LR, accumulation, EMA: resumed == uninterrupted."""
    model = tiny_config_dict(tmp_path)["model"]
    model["text_encoder"]["trainable"] = True
    fields = {"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3, "grad_accum": 2, "warmup_steps": 2,
              "lr_schedule": "cosine", "text_lr": 3e-4, "model": model}
    full = tiny_config(tmp_path, out_dir=str(tmp_path / "full"), **fields)
    train(full)
    reference = _final_state(tmp_path / "full", 6)
    assert any(k.startswith(state.TEXT_FILE) for k in reference)

    # the same run, "interrupted" after step 4: only what was on disk then survives
    cut = tiny_config(tmp_path, out_dir=str(tmp_path / "cut"), **fields)
    train(cut)
    shutil.rmtree(tmp_path / "cut" / CHECKPOINTS_DIR / checkpoint_name(6))
    shutil.rmtree(tmp_path / "cut" / "model")
    summary = train(cut, resume="latest")
    assert summary["start_step"] == 4 and summary["resumed_from"].endswith(checkpoint_name(4))
    _assert_bitwise_equal(_final_state(tmp_path / "cut", 6), reference)
    with pytest.raises(ConfigError, match="batch_size"):
        train(tiny_config(tmp_path, out_dir=str(tmp_path / "cut"), **{**fields, "batch_size": 2}), resume="latest")


@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_resume_after_sigkill_is_bit_exact(tmp_path: Path) -> None:
    """`cxrgen train` killed with SIGKILL right after a checkpoint, resumed: same final weights."""
    fields = {"steps": 40, "checkpoint_every": 4, "keep_checkpoints": 2, "warmup_steps": 3, "lr_schedule": "cosine"}
    config = write_config(tmp_path, **fields)
    killed_out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "cxrgen.cli", "train", str(config), "--out", str(killed_out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed_out / CHECKPOINTS_DIR / checkpoint_name(4)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not first.is_dir():
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared in time")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    written = [p.name for p in list_checkpoints(killed_out / CHECKPOINTS_DIR)]
    assert written and written[-1] != checkpoint_name(40), "the run finished before it could be killed"
    assert not (killed_out / "model").exists()

    from cxrgen.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, config)
    summary = train(cfg, resume="latest", out_dir=killed_out)
    assert summary["start_step"] >= 4
    assert not list((killed_out / CHECKPOINTS_DIR).glob(STAGING_PREFIX + "*"))
    train(cfg, out_dir=tmp_path / "reference")
    _assert_bitwise_equal(_final_state(killed_out, 40), _final_state(tmp_path / "reference", 40))
