"""Training checkpoints on disk: written atomically (staging dir, fsync, rename), the last K kept.

Layout: ``OUT/checkpoints/step-00000500/`` with denoiser.safetensors, ema.safetensors,
text_encoder.safetensors (joint training only), optimizer.pt, lr_schedule.pt, scaler.pt (fp16),
rng-rank{R}.pt (one per process), trainer_state.json and the run's train_config.yaml.
A checkpoint is written into ``.tmp-step-...`` beside it and renamed only when every file is
on disk, so a crash (even SIGKILL) never leaves a half-written ``step-*`` folder; stale staging
folders are ignored and removed at the next write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from cxrgen.config.training import TRAIN_CONFIG_NAME
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "step-"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".old-"
STATE_NAME = "trainer_state.json"  # written last: its presence marks a complete checkpoint
CONFIG_NAME = TRAIN_CONFIG_NAME
STEP_DIGITS = 8


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after optimizer step ``step`` (zero-padded, so names sort)."""
    return f"{PREFIX}{step:0{STEP_DIGITS}d}"


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint folder was written after."""
    return int(path.name[len(PREFIX):])


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (the checkpoints folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / STATE_NAME).is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_resume(out_dir: str | Path, resume: str | Path) -> Path:
    """The checkpoint to resume from: ``"latest"`` under ``out_dir``, or an explicit checkpoint folder."""
    if str(resume) == "latest":
        found = list_checkpoints(Path(out_dir) / CHECKPOINTS_DIR)
        if not found:
            raise ConfigError(f"--resume latest: no checkpoint under {Path(out_dir) / CHECKPOINTS_DIR}; "
                              "start without --resume, or give the run's --out folder")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise ConfigError(f"--resume {path}: not a complete checkpoint folder (no {STATE_NAME}); "
                          f"give a {CHECKPOINTS_DIR}/{PREFIX}* folder or 'latest'")
    return path


# --------------------------------------------------------------------------------------------
# Writing (every file fsynced before the folder is renamed into place)
# --------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_staging(root: str | Path, step: int) -> Path:
    """A fresh, empty staging folder for the checkpoint of ``step`` (stale leftovers removed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = root / (STAGING_PREFIX + checkpoint_name(step))
    staging.mkdir()
    return staging


def write_module(module: nn.Module, path: Path) -> None:
    """Weights of ``module`` as safetensors (shared tensors de-duplicated), fsynced."""
    save_model(module, str(path), force_contiguous=True)
    _fsync(path)


def read_module(module: nn.Module, path: Path) -> None:
    """Load weights written by :func:`write_module` into ``module`` (strict)."""
    try:
        missing, unexpected = load_model(module, str(path), strict=True, device=_device_of(module))
    except SafetensorError as exc:
        raise ConfigError(f"checkpoint file {path} is corrupt or truncated ({exc}): resume from an older "
                          f"checkpoint folder (--resume {path.parent.parent}/{PREFIX}...)") from None
    if missing or unexpected:  # strict raises already; kept for clarity
        raise ConfigError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")


def _device_of(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return "cpu" if param is None else str(param.device)


def write_state(obj: Any, path: Path) -> None:
    """Optimizer / scheduler / RNG state with torch.save (read back with weights_only=True), fsynced."""
    torch.save(obj, path)
    _fsync(path)


def read_state(path: Path) -> Any:
    """A state written by :func:`write_state`; never unpickles arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(obj: dict, path: Path) -> None:
    """A JSON file, fsynced."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    _fsync(path)


def commit(staging: Path, keep: int) -> Path:
    """Rename a fully written staging folder to its ``step-*`` name, then keep only the last ``keep``."""
    if not (staging / STATE_NAME).is_file():
        raise ConfigError(f"staging folder {staging} has no {STATE_NAME}: the checkpoint is incomplete")
    _fsync(staging)
    final = staging.parent / staging.name[len(STAGING_PREFIX):]
    if final.exists():  # the same step written again after a resume from an older checkpoint
        trash = final.parent / (TRASH_PREFIX + final.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync(final.parent)
    prune(final.parent, keep, current=final)
    log.info("checkpoint written: %s", final)
    return final


def discard(staging: Path) -> None:
    """Remove a staging folder after a failed write (the previous checkpoints stay as they were)."""
    shutil.rmtree(staging, ignore_errors=True)


def prune(root: Path, keep: int, current: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints; returns the deleted folders.

    ``current`` (the checkpoint just written) is always kept, and checkpoints of later steps (left by
    another run, or before a resume from an older checkpoint) never push it or its predecessors out.
    """
    found = list_checkpoints(root)
    if current is not None:
        later = [p for p in found if checkpoint_step(p) > checkpoint_step(current)]
        if later:
            log.warning("checkpoints of later steps %s are not this run's: kept, but --resume latest would pick "
                        "them; delete them or resume by path", [p.name for p in later])
        found = [p for p in found if checkpoint_step(p) <= checkpoint_step(current)]
    old = found[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def read_json(path: Path) -> dict:
    """A JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
