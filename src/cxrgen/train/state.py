"""Save and restore everything a training run needs to continue exactly: weights, optimizer, RNG, data position."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrgen.config import save_config
from cxrgen.errors import ConfigError
from cxrgen.train import checkpoint as ckpt
from cxrgen.train.loop import TrainingRun

log = logging.getLogger(__name__)

DENOISER_FILE = "denoiser.safetensors"
EMA_FILE = "ema.safetensors"
TEXT_FILE = "text_encoder.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
LR_SCHEDULE_FILE = "lr_schedule.pt"
SCALER_FILE = "scaler.pt"


def rng_file(rank: int) -> str:
    """File of one process's RNG states (training generator, torch CPU and CUDA)."""
    return f"rng-rank{rank}.pt"


def _rng_state(run: TrainingRun) -> dict:
    state = {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _trainer_state(run: TrainingRun) -> dict:
    return {"step": run.step, "consumed": run.consumed, "epoch": run.consumed // run.dataset_size,
            "epoch_position": run.consumed % run.dataset_size, "dataset_size": run.dataset_size,
            "world_size": run.accelerator.num_processes, "batch_size": run.cfg.batch_size,
            "seed": run.cfg.seed, "history": run.history}


def _write_main_files(run: TrainingRun, staging: Path) -> None:
    acc = run.accelerator
    ckpt.write_module(acc.unwrap_model(run.denoiser), staging / DENOISER_FILE)
    ckpt.write_module(run.ema.model, staging / EMA_FILE)
    if run.text_trainable:
        ckpt.write_module(acc.unwrap_model(run.text_encoder), staging / TEXT_FILE)
    ckpt.write_state(run.optimizer.state_dict(), staging / OPTIMIZER_FILE)
    ckpt.write_state(run.lr_schedule.state_dict(), staging / LR_SCHEDULE_FILE)
    if acc.scaler is not None:
        ckpt.write_state(acc.scaler.state_dict(), staging / SCALER_FILE)
    save_config(run.cfg, staging / ckpt.CONFIG_NAME)
    ckpt.write_json(_trainer_state(run), staging / ckpt.STATE_NAME)  # last: marks the folder complete


def save_run_checkpoint(run: TrainingRun) -> Path:
    """Write the checkpoint of run.step atomically; every process adds its RNG file. Returns its folder."""
    acc = run.accelerator
    root = run.out_dir / ckpt.CHECKPOINTS_DIR
    staging = root / (ckpt.STAGING_PREFIX + ckpt.checkpoint_name(run.step))
    if acc.is_main_process:
        staging = ckpt.start_staging(root, run.step)
    acc.wait_for_everyone()
    try:
        ckpt.write_state(_rng_state(run), staging / rng_file(acc.process_index))
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_main_files(run, staging)
            ckpt.commit(staging, run.cfg.keep_checkpoints)
    except BaseException:
        if acc.is_main_process:
            ckpt.discard(staging)
        raise
    acc.wait_for_everyone()
    return root / ckpt.checkpoint_name(run.step)


def load_run_state(run: TrainingRun, path: Path) -> None:
    """Restore weights, EMA, optimizer, LR schedule, scaler, RNG states and data position from ``path``."""
    acc = run.accelerator
    state = ckpt.read_json(path / ckpt.STATE_NAME)
    if state["batch_size"] != run.cfg.batch_size or state["seed"] != run.cfg.seed:
        raise ConfigError(f"checkpoint {path} was written with batch_size={state['batch_size']}, seed={state['seed']}; "
                          f"this run has {run.cfg.batch_size}, {run.cfg.seed}: resume with the run's own config")
    ckpt.read_module(acc.unwrap_model(run.denoiser), path / DENOISER_FILE)
    ckpt.read_module(run.ema.model, path / EMA_FILE)
    if run.text_trainable:
        ckpt.read_module(acc.unwrap_model(run.text_encoder), path / TEXT_FILE)
    run.optimizer.load_state_dict(ckpt.read_state(path / OPTIMIZER_FILE))
    run.lr_schedule.load_state_dict(ckpt.read_state(path / LR_SCHEDULE_FILE))
    if acc.scaler is not None and (path / SCALER_FILE).is_file():
        acc.scaler.load_state_dict(ckpt.read_state(path / SCALER_FILE))
    _load_rng(run, path)
    run.step, run.consumed, run.history = state["step"], state["consumed"], list(state.get("history", []))
    run.ema.num_updates = run.step  # one EMA update per optimizer step: the warm-up resumes where it was
    run.last_checkpoint = path


def _load_rng(run: TrainingRun, path: Path) -> None:
    acc = run.accelerator
    rng_path = path / rng_file(acc.process_index)
    if not rng_path.is_file():  # e.g. resumed on more processes than it was written with
        log.warning("%s missing: rank %d continues with a fresh generator (the resume is not exact)",
                    rng_path, acc.process_index)
        return
    rng = ckpt.read_state(rng_path)
    run.generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
