"""Scale-out: two CPU processes (gloo DDP under `accelerate launch`) train and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config_dict, write_config

from cxrgen.train import state
from cxrgen.train.checkpoint import (
    CHECKPOINTS_DIR,
    checkpoint_name,
    read_json,
    read_state,
)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 240
# Each rank runs train() and writes its own summary (with the sha256 of its in-memory weights).
RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from cxrgen.config import TrainConfig, load_config
from cxrgen.train.checkpoint import CHECKPOINTS_DIR, checkpoint_name
from cxrgen.train.trainer import train
config, cut = sys.argv[1], int(sys.argv[2])
cfg = load_config(TrainConfig, config)
full = train(cfg)
dist.barrier()
if full["rank"] == 0:  # "interrupt": drop the last checkpoint, then resume both ranks from the one before
    last = os.path.join(cfg.out_dir, CHECKPOINTS_DIR, checkpoint_name(cfg.steps))
    os.rename(last, last + "-kept")
dist.barrier()
resumed = train(cfg, resume="latest")
with open(config + f".rank{full['rank']}.json", "w") as f:
    json.dump({"full": full, "resumed": resumed}, f)
"""


def _launch(script: Path, config: Path, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), ACCELERATE_USE_CPU="true")
    # --multi_gpu selects accelerate's torchrun launcher; without CUDA the Accelerator runs gloo on CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), str(config), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # ~10-30 s: left out of the quick tier (pytest -m 'not slow')
def test_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    model = tiny_config_dict(tmp_path)["model"]
    model["text_encoder"]["trainable"] = True  # joint training: the text encoder is DDP-wrapped too
    config = write_config(tmp_path, steps=3, checkpoint_every=2, batch_size=2, out_dir=str(tmp_path / "ddp"),
                          model=model)
    _launch(script, config, "2")
    ranks = [json.loads(Path(f"{config}.rank{r}.json").read_text()) for r in (0, 1)]
    full, resumed = [r["full"] for r in ranks], [r["resumed"] for r in ranks]
    assert [s["world_size"] for s in full] == [2, 2]
    assert full[0]["weights_sha256"] == full[1]["weights_sha256"]
    assert full[0]["images_seen"] == 3 * 2 * 2  # each step: batch_size per rank x 2 ranks
    ckpt = tmp_path / "ddp" / CHECKPOINTS_DIR / checkpoint_name(3)
    meta = read_json(ckpt / "trainer_state.json")
    assert meta["world_size"] == 2 and meta["consumed"] == 12
    rng = [read_state(ckpt / state.rng_file(r))["generator"] for r in (0, 1)]
    assert not torch.equal(rng[0], rng[1])  # each rank draws its own noise
    # both ranks resumed from step 2 and reproduced the uninterrupted weights
    assert [s["start_step"] for s in resumed] == [2, 2]
    assert resumed[0]["weights_sha256"] == resumed[1]["weights_sha256"] == full[0]["weights_sha256"]
