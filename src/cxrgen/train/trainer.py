"""Diffusion training: ``train(cfg)`` builds the parts, trains with accelerate, checkpoints, and saves a CXRPipeline.

Composition: build parts -> data stream -> accelerate (DDP, mixed precision, accumulation) ->
[optimizer step (train/loop.py) -> log -> samples -> checkpoint] x steps -> final model + metrics.
One process or many under ``accelerate launch``; a run resumed from a checkpoint ends bit-identical
(on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrgen.config import TrainConfig, load_config, save_config
from cxrgen.data.dataset import ManifestImageDataset
from cxrgen.errors import ConfigError
from cxrgen.objective import check_objective
from cxrgen.outputs import check_writable, remove_paths, run_artefacts
from cxrgen.parts import ModelParts, build_model_parts
from cxrgen.samplers import training_scheduler
from cxrgen.train import checkpoint as ckpt
from cxrgen.train.data import ShardedBatchStream
from cxrgen.train.ema import EMA
from cxrgen.train.loop import TrainingRun, optimizer_step
from cxrgen.train.metrics_log import (
    METRICS_CSV,
    SAMPLES_DIR,
    TENSORBOARD_DIR,
    MetricsLog,
    image_grid,
    save_grid,
)
from cxrgen.train.optim import build_lr_schedule, build_optimizer
from cxrgen.train.state import load_run_state, save_run_checkpoint

log = logging.getLogger(__name__)

MODEL_DIR = "model"
METRICS_JSON = "metrics.json"
#: Seeds of the per-rank training generators are cfg.seed + rank * RANK_SEED_STRIDE (distinct noise per rank).
RANK_SEED_STRIDE = 1_000_003
#: What a run writes into its output folder: a fresh run refuses a folder holding any of them.
RUN_ARTEFACTS = (ckpt.CHECKPOINTS_DIR, MODEL_DIR, METRICS_JSON, METRICS_CSV, TENSORBOARD_DIR, SAMPLES_DIR,
                 ckpt.CONFIG_NAME)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------
def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """accelerate's Accelerator: DDP across processes, mixed precision, gradient accumulation; CPU without CUDA."""
    # accelerate keeps one AcceleratorState per process; drop the previous run's precision settings so
    # train() can be called again in the same process (the distributed PartialState is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                       cpu=not torch.cuda.is_available())


def training_dataset(cfg: TrainConfig, parts: ModelParts) -> tuple[Dataset, tuple | None]:
    """The cache (when cfg.cache_dir holds one; a stale one is refused) or the manifest images.

    Returns the dataset and the cached null-prompt text ((1, L, D), (1, L)) when it has embeddings.
    """
    if cfg.cache_dir is not None:
        from cxrgen.cache import CachedDataset, check_cache, read_index

        if read_index(cfg.cache_dir) is not None:
            frozen_text = None if parts.text_encoder.trainable else parts.text_encoder
            check_cache(cfg, cfg.cache_dir, parts.autoencoder, frozen_text)
            data = CachedDataset(cfg.cache_dir)
            null = data.null_text() if data.has_text and not parts.text_encoder.trainable else None
            log.info("training from the cache in %s (%d rows)", cfg.cache_dir, len(data))
            return data, None if null is None else (null[0][None], null[1][None])
        log.warning("cache_dir %s holds no cache yet: encoding images on the fly (build one with "
                    "`cxrgen cache CONFIG` for faster steps)", cfg.cache_dir)
    if not cfg.manifests:
        raise ConfigError("no training data: set manifests (from `cxrgen prepare`) or cache_dir")
    return ManifestImageDataset(cfg.manifests, cfg.split, cfg.image), None


def _loader(cfg: TrainConfig, dataset: Dataset, acc: Accelerator, start: int) -> DataLoader:
    """An endless DataLoader over this rank's share of the seeded sample stream, from sample ``start``."""
    stream = ShardedBatchStream(len(dataset), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes, start)
    return DataLoader(dataset, batch_sampler=stream, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(cfg.seed))  # never touches the global RNG


def setup_run(cfg: TrainConfig, out_dir: Path, parts: ModelParts | None = None,
              dataset: Dataset | None = None) -> tuple[TrainingRun, Dataset]:
    """Parts, optimizer, schedule, EMA and accelerate preparation of a fresh run (step 0)."""
    acc = make_accelerator(cfg)
    parts = parts or build_model_parts(cfg)
    null = None
    if dataset is None:
        dataset, null = training_dataset(cfg, parts)
    denoiser, text, codec = parts.denoiser, parts.text_encoder, parts.autoencoder
    check_objective(cfg.objective, denoiser)
    scheduler = training_scheduler(cfg.schedule, denoiser.prediction_type, cfg.objective.kind)
    joint = text.trainable
    codec.requires_grad_(False).eval().to(acc.device)
    ema = EMA(denoiser, cfg.ema_decay, warmup=cfg.ema_warmup).to(acc.device)
    optimizer = build_optimizer(cfg, denoiser, text if joint else None)
    lr_schedule = build_lr_schedule(cfg, optimizer)
    if joint:
        denoiser, text, optimizer = acc.prepare(denoiser, text, optimizer)
    else:
        denoiser, optimizer = acc.prepare(denoiser, optimizer)
        text.to(acc.device)
        if null is None:
            null = text.encode_null(1)  # (1, L, D), (1, L)
    gen = torch.Generator().manual_seed(cfg.seed + RANK_SEED_STRIDE * acc.process_index)
    run = TrainingRun(cfg=cfg, out_dir=out_dir, accelerator=acc, denoiser=denoiser, text_encoder=text,
                      codec=codec, scheduler=scheduler,
                      optimizer=optimizer, lr_schedule=lr_schedule, ema=ema, generator=gen,
                      null_context=None if null is None else (null[0].to(acc.device), null[1].to(acc.device)),
                      global_batch=cfg.batch_size * acc.num_processes)
    return run, dataset


def prepare_out_dir(out: Path, resume: str | Path | None, overwrite: bool) -> None:
    """Before step 1: prove ``out`` writable, and refuse (or, with ``overwrite``, clear) a previous run there."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    check_writable(out)
    if (out / ckpt.CHECKPOINTS_DIR).is_dir():  # where the first write after step 1 goes
        check_writable(out / ckpt.CHECKPOINTS_DIR)
    if resume is not None and overwrite:
        raise ConfigError("--resume continues the run in the output folder, --overwrite deletes it: give one")
    found = run_artefacts(out, RUN_ARTEFACTS) if resume is None else []
    if found and not overwrite:
        raise ConfigError(f"{out} holds a previous run ({', '.join(p.name for p in found)}): continue it with "
                          "--resume latest, delete it with --overwrite, or give a new --out folder")
    state.wait_for_everyone()  # every rank has looked before the main process deletes or writes anything
    if found and state.is_main_process:
        log.warning("--overwrite: deleting the previous run's %s in %s", [p.name for p in found], out)
        remove_paths(found)
    state.wait_for_everyone()


# --------------------------------------------------------------------------------------------
# Samples and the final model
# --------------------------------------------------------------------------------------------
def make_pipeline(run: TrainingRun):
    """A CXRPipeline of the run's parts with the EMA denoiser (the weights that are shipped)."""
    from cxrgen.pipeline import CXRPipeline

    text = run.accelerator.unwrap_model(run.text_encoder)
    return CXRPipeline(text, run.codec, run.ema.model, run.scheduler, run.cfg.model.image_size,
                       sampling=run.cfg.sampling)


def write_samples(run: TrainingRun, metrics: MetricsLog) -> Path | None:
    """A grid of samples for cfg.validation_prompts with the EMA weights (main process; own generator)."""
    cfg = run.cfg
    if not cfg.validation_prompts or not run.accelerator.is_main_process:
        return None
    text = run.accelerator.unwrap_model(run.text_encoder)
    was_training = text.training
    text.eval()
    out = make_pipeline(run)(list(cfg.validation_prompts), generator=torch.Generator().manual_seed(cfg.sampling.seed),
                             progress=False)
    text.train(was_training)
    image_cfg = dataclasses.replace(cfg.image, size=cfg.model.image_size)
    path = save_grid(out.images, out.prompts, run.out_dir / SAMPLES_DIR / f"step-{run.step:08d}.png",
                     image_cfg, run.step)
    metrics.add_grid("samples", image_grid(out.images, pad_value=image_cfg.low), run.step, image_cfg)
    return path


def weights_sha256(run: TrainingRun) -> str:
    """SHA-256 of this process's denoiser, EMA (and joint text encoder) weights: names, shapes, bytes."""
    digest = hashlib.sha256()
    modules = [("denoiser.", run.accelerator.unwrap_model(run.denoiser)), ("ema.", run.ema.model)]
    if run.text_trainable:
        modules.append(("text_encoder.", run.accelerator.unwrap_model(run.text_encoder)))
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}{name}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_final_model(run: TrainingRun) -> Path:
    """The trained model (EMA weights) as a CXRPipeline directory at OUT/model (main process)."""
    path = run.out_dir / MODEL_DIR
    if run.accelerator.is_main_process:
        make_pipeline(run).save_pretrained(path, text_weights=not run.cfg.text_by_reference)
        save_config(run.cfg, path / ckpt.CONFIG_NAME)
    run.accelerator.wait_for_everyone()
    return path


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _due(step: int, every: int, last: int) -> bool:
    return every > 0 and (step % every == 0 or step == last)


def _train_steps(run: TrainingRun, metrics: MetricsLog) -> dict[str, float]:
    """Optimizer steps from run.step to cfg.steps with logs, sample grids and checkpoints."""
    cfg, acc = run.cfg, run.accelerator
    bar = tqdm(total=cfg.steps, initial=run.step, desc="train", disable=not (cfg.progress and acc.is_main_process))
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    out: dict[str, float] = {}
    while run.step < cfg.steps:
        out = optimizer_step(run)
        window_loss, window_steps = window_loss + out["loss"], window_steps + 1
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        speed = window_steps * cfg.grad_accum * run.global_batch / elapsed
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.4f}", img_s=f"{speed:.1f}")
        if _due(run.step, cfg.log_every, cfg.steps):
            row = {"step": run.step, "epoch": run.consumed / run.dataset_size, "loss": window_loss / window_steps,
                   "lr": out["lr"], "images_per_s": speed, "grad_norm": out["grad_norm"]}
            metrics.log(row)
            run.history.append(row)
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if cfg.sample_every > 0 and run.step % cfg.sample_every == 0:
            write_samples(run, metrics)
        if _due(run.step, cfg.checkpoint_every, cfg.steps):
            run.last_checkpoint = save_run_checkpoint(run)
    bar.close()
    return out


def train(cfg: TrainConfig, resume: str | Path | None = None, out_dir: str | Path | None = None,
          parts: ModelParts | None = None, dataset: Dataset | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train the diffusion model of ``cfg``; ``resume`` = "latest" or a checkpoint folder. Returns a summary.

    A fresh run refuses an output folder that holds a previous run unless ``overwrite`` (which deletes it).

    ``parts`` / ``dataset`` replace the parts built from ``cfg.model`` and the manifest/cache data
    (items: {"image" or "latent_mean"+"latent_std", "prompt", ...}); a resumed run must pass the same.
    """
    out = Path(out_dir if out_dir is not None else cfg.out_dir)
    if out_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(out))
    prepare_out_dir(out, resume, overwrite)
    # The run owns the global torch RNG (dropout of a joint text encoder draws from it) inside a fork:
    # seeded per rank here, checkpointed and restored, and the caller's RNG state is left untouched.
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        return _train(cfg, out, resume, parts, dataset)


def _train(cfg: TrainConfig, out: Path, resume: str | Path | None, parts: ModelParts | None,
           dataset: Dataset | None) -> dict[str, Any]:
    run, data = setup_run(cfg, out, parts, dataset)
    torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * run.accelerator.process_index)  # inside train()'s fork_rng
    resumed_from = None
    if resume is not None:
        resumed_from = ckpt.resolve_resume(out, resume)
        load_run_state(run, resumed_from)
        log.info("resumed from %s at step %d", resumed_from, run.step)
    run.dataset_size = len(data)
    run.batches = iter(_loader(cfg, data, run.accelerator, run.consumed))
    if run.accelerator.is_main_process:
        save_config(cfg, out / ckpt.CONFIG_NAME)
    metrics = MetricsLog(out, enabled=run.accelerator.is_main_process,
                         resume_step=run.step if resumed_from is not None else None)
    start, t0 = run.step, time.perf_counter()
    try:
        last = _train_steps(run, metrics)
    finally:
        metrics.close()
    wall = time.perf_counter() - t0
    model_dir = save_final_model(run)
    summary = {
        "steps": run.step, "start_step": start, "resumed_from": None if resumed_from is None else str(resumed_from),
        "final_loss": last.get("loss"), "history": run.history, "world_size": run.accelerator.num_processes,
        "rank": run.accelerator.process_index,
        "images_seen": run.consumed, "wall_s": wall,
        "images_per_s": (run.step - start) * cfg.grad_accum * run.global_batch / max(wall, 1e-9),
        "weights_sha256": weights_sha256(run),  # per process: equal on every rank when DDP kept them in sync
        "model_dir": str(model_dir), "checkpoint": None if run.last_checkpoint is None else str(run.last_checkpoint),
    }
    if run.accelerator.is_main_process:
        (out / METRICS_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def run_train(config_path: str | Path | None, overrides: list[str] | None = None,
              resume: str | Path | None = None, out_dir: str | Path | None = None,
              overwrite: bool = False) -> dict[str, Any]:
    """What ``cxrgen train CONFIG [--set k=v] [--resume latest|PATH] [--out DIR] [--overwrite]`` calls."""
    cfg = load_config(TrainConfig, config_path, overrides)
    return train(cfg, resume=resume, out_dir=out_dir, overwrite=overwrite)
