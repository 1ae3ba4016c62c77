"""One arm of the budget study: trained in stages to a growing CPU budget, its record kept in ARM/arm.json.

``arm.json`` is what the study keeps (checkpoints live outside git and may vanish): the arm's resolved
training config, every evaluation point (clock seconds, steps, scores, the checkpoint written there)
and every stage (one invocation that trained the arm: from which point, to which budget, when, on
what machine). A later stage continues from the checkpoint of the last point, so an arm taken from
12 to 30 and then 90 CPU-minutes keeps one curve; with the training generator, optimizer, EMA, data
position and RNG restored, the continued run takes exactly the steps an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cxrgen.errors import ConfigError
from cxrgen.train.loop import optimizer_step
from cxrgen.train.state import load_run_state, save_run_checkpoint
from cxrgen.train.trainer import _loader, prepare_out_dir, save_final_model, setup_run

log = logging.getLogger("budget")

RECORD = "arm.json"
FORMAT = "cxrgen-budget-arm"
LOG_EVERY = 25  # optimizer steps between progress lines
#: Config fields that may differ between the stages of one arm (where it is written, not what is trained).
STAGE_FREE = ("out_dir",)


def read_record(arm_dir: Path) -> dict[str, Any] | None:
    """The arm's record (ARM/arm.json), or None when the arm was never trained or scored there."""
    path = arm_dir / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a budget-study arm record (format {record.get('format')!r})")
    return record


def write_record(arm_dir: Path, record: dict[str, Any]) -> None:
    """Write ARM/arm.json whole (via a temporary file, so a crash never leaves half a record)."""
    arm_dir.mkdir(parents=True, exist_ok=True)
    tmp = arm_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(arm_dir / RECORD)


def config_dict(cfg: Any) -> dict[str, Any]:
    """The training config as plain JSON values, without the fields a stage may change."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return {k: v for k, v in data.items() if k not in STAGE_FREE}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every leaf that differs between two config dicts."""
    old, new = _flat(recorded), _flat(current)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of the config dict (sorted JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def new_record(arm: str, kind: str, clock: str, config: dict[str, Any] | None, overrides: list[str]) -> dict[str, Any]:
    """An empty record of a trained arm (``kind`` "trained") or of a scored model (``kind`` "reference")."""
    return {"format": FORMAT, "version": 1, "arm": arm, "kind": kind, "clock": clock, "overrides": overrides,
            "config_sha256": None if config is None else config_sha256(config), "config": config,
            "stages": [], "points": []}


def machine() -> dict[str, Any]:
    """Where a stage ran: CPU, cores, threads, niceness, load, torch and Python versions."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "nice": os.nice(0) if hasattr(os, "nice") else None,
            "load_avg_1m": None if load is None else round(load[0], 2), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available()}


def utc_now() -> str:
    """The current time, ISO 8601 UTC to the second."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter  # "steps" counts 1 per step instead


def resume_point(record: dict[str, Any] | None, arm_dir: Path, config: dict[str, Any], clock: str
                 ) -> tuple[dict[str, Any] | None, Path | None]:
    """The last point of a recorded arm and its checkpoint, checked against this stage's config and clock.

    Raises ConfigError when the recipe or clock changed, or when the checkpoint is gone (the curve stays in
    arm.json, but the arm cannot be extended: train it again into a new --out).
    """
    if record is None or not record["points"]:
        return None, None
    if record["clock"] != clock:
        raise ConfigError(f"{arm_dir.name} was trained with --clock {record['clock']}; continue it with the same clock")
    if record["config_sha256"] != config_sha256(config):
        diff = config_differences(record["config"] or {}, config)
        raise ConfigError(f"{arm_dir.name} was trained with another recipe ({'; '.join(diff[:5])}): continue it "
                          "with the same --config and --set options, or give a new --out")
    last = record["points"][-1]
    checkpoint = arm_dir / last["checkpoint"]
    if not checkpoint.is_dir():
        raise ConfigError(f"{arm_dir.name}: the checkpoint of its last point ({checkpoint}, step {last['steps']}, "
                          f"{last['clock_s'] / 60:.1f} min) is gone; its curve stays in {arm_dir / RECORD}, but "
                          "extending it needs that checkpoint: train the arm again into a new --out")
    return last, checkpoint


def _targets(budget_s: float, eval_at: list[float], spent: float) -> list[float]:
    """Clock seconds at which to score: each share of the budget not yet reached."""
    return [share * budget_s for share in sorted(eval_at) if share * budget_s > spent]


def train_arm(cfg: Any, arm_dir: Path, record: dict[str, Any], budget_s: float, eval_at: list[float],
              evaluate: Callable[[Path], dict[str, Any]], clock: str | None = None,
              argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or continue) one arm to ``budget_s`` clock seconds, scoring at each ``eval_at`` share; returns the record.

    The clock (None: the record's; "cpu": process CPU seconds, "wall": wall-clock seconds, "steps": optimizer
    steps; a recorded arm continues only on its own clock) counts
    optimizer steps only: saving, checkpointing and scoring are outside the budget (their cost is recorded
    per point as eval_cpu_s / eval_wall_s). The record is rewritten after every point.
    """
    clock = clock or record["clock"]
    last, checkpoint = resume_point(record, arm_dir, config_dict(cfg), clock)
    record["clock"] = clock  # unchanged for a recorded arm (resume_point checked it)
    spent = 0.0 if last is None else float(last["clock_s"])
    targets = _targets(budget_s, eval_at, spent)
    if not targets:
        log.info("%s: already at %.1f of %.1f clock s, nothing to train", arm_dir.name, spent, budget_s)
        return record
    prepare_out_dir(arm_dir, checkpoint, overwrite=checkpoint is None)
    stage = {"stage": len(record["stages"]) + 1, "started_utc": utc_now(), "budget_s": budget_s,
             "eval_at": sorted(eval_at), "from_step": 0 if last is None else last["steps"], "from_clock_s": spent,
             "resumed_from": None if checkpoint is None else last["checkpoint"], "argv": argv or sys.argv[1:],
             "machine": machine()}
    record["stages"].append(stage)
    with torch.random.fork_rng(devices=[]):  # the run owns the global RNG, as train() does
        run, data = setup_run(cfg, arm_dir)
        torch.manual_seed(cfg.seed)
        if checkpoint is not None:
            load_run_state(run, checkpoint)  # weights, EMA, optimizer, LR schedule, RNG, data position
        run.dataset_size = len(data)
        run.batches = iter(_loader(cfg, data, run.accelerator, run.consumed))
        wall = 0.0 if last is None else float(last["wall_s"])
        for target in targets:
            spent, wall, loss = _steps_until(run, target, spent, wall, clock, arm_dir.name)
            record["points"].append(_point(run, arm_dir, stage, (spent, wall, loss, clock), budget_s, evaluate))
            stage |= {"ended_utc": utc_now(), "to_step": run.step, "to_clock_s": spent}
            write_record(arm_dir, record)
    return record


def _steps_until(run: Any, target: float, spent: float, wall: float, clock: str, name: str
                 ) -> tuple[float, float, float]:
    """Optimizer steps until ``spent`` reaches ``target``; returns the new (spent, wall seconds, mean loss)."""
    now, losses = _clock(clock), []
    while spent < target:
        t0, w0 = now(), time.perf_counter()
        losses.append(optimizer_step(run)["loss"])
        spent = spent + (1.0 if clock == "steps" else now() - t0)
        wall += time.perf_counter() - w0
        if run.step % LOG_EVERY == 0:
            log.info("%s step %d: loss %.4f, %.0f of %.0f clock s", name, run.step, losses[-1], spent, target)
    recent = losses[-LOG_EVERY:]
    return spent, wall, sum(recent) / max(len(recent), 1)


def _point(run: Any, arm_dir: Path, stage: dict[str, Any], at: tuple[float, float, float, str], budget_s: float,
           evaluate: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Save the EMA model and a full checkpoint, then score the model (its own RNG fork, outside the budget)."""
    spent, wall, loss, clock = at
    model = save_final_model(run)
    checkpoint = save_run_checkpoint(run)
    point = {"stage": stage["stage"], "budget_s": budget_s, "clock_s": spent,
             "cpu_min": None if clock == "steps" else spent / 60, "wall_s": wall, "steps": run.step,
             "images_seen": run.consumed, "loss": loss, "checkpoint": str(checkpoint.relative_to(arm_dir)),
             "utc": utc_now()}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # scoring never moves the training RNG: a continued run stays exact
        point |= evaluate(model)
    point |= {"eval_cpu_s": time.process_time() - cpu0, "eval_wall_s": time.perf_counter() - wall0}
    log.info("%s at %.1f clock min: %s", arm_dir.name, spent / 60,
             {k: point.get(k) for k in ("steps", "c2st_linear", "swd", "cond_gain", "eval_cpu_s")})
    return point
