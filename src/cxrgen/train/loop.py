"""One optimizer step of diffusion training: batches -> latents + text -> loss -> accumulate -> update.

Every random draw comes from the run's training generator, in a fixed order per micro-batch:
guidance dropout (B), posterior noise (B, C, h, w), then t (or s), eps and any token mask inside
``diffusion_loss`` (see cxrgen.objective).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from cxrgen.autoencoder import LatentCodec, sample_posterior
from cxrgen.config import TrainConfig
from cxrgen.errors import TrainingDivergedError
from cxrgen.objective import cfg_drop_mask, diffusion_loss, drop_context, drop_prompts
from cxrgen.train.ema import EMA


@dataclass
class TrainingRun:
    """Everything a running training holds; ``step`` counts optimizer steps, ``consumed`` samples."""

    cfg: TrainConfig
    out_dir: Path
    accelerator: Accelerator
    denoiser: nn.Module  # prepared (DDP-wrapped when distributed)
    text_encoder: nn.Module  # prepared when trainable; plain and frozen otherwise
    codec: LatentCodec
    scheduler: SchedulerMixin  # the training scheduler: DDPM, or rectified flow (objective.kind=flow)
    optimizer: torch.optim.Optimizer
    lr_schedule: LambdaLR
    ema: EMA
    generator: torch.Generator
    batches: Iterator[dict] | None = None
    null_context: tuple[torch.Tensor, torch.Tensor] | None = None  # frozen encoder: (1, L, D), (1, L)
    step: int = 0
    consumed: int = 0  # samples taken from the global stream (all ranks)
    global_batch: int = 0
    dataset_size: int = 1
    last_checkpoint: Path | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def text_trainable(self) -> bool:
        """Whether the text encoder learns jointly with the denoiser."""
        return bool(self.accelerator.unwrap_model(self.text_encoder).trainable)

    def trainable_modules(self) -> list[nn.Module]:
        """The prepared modules that get gradients."""
        return [self.denoiser, self.text_encoder] if self.text_trainable else [self.denoiser]


def batch_latents(batch: dict, codec: LatentCodec, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Scaled latents z0 (B, C, h, w): a posterior sample from cached (mean, std) or encoded images."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"].to(device).float(), batch["latent_std"].to(device).float()
    else:
        with torch.no_grad():
            mean, std = codec.encode_distribution(batch["image"].to(device))
        mean, std = mean.float(), std.float()
    return codec.scale_latents(sample_posterior(mean, std, generator))  # (B, C, h, w)


def batch_context(run: TrainingRun, batch: dict, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Context (B, L, D) and mask (B, L) with the rows in ``drop`` set to the null prompt (guidance)."""
    device = run.accelerator.device
    if "context" in batch and not run.text_trainable and run.null_context is not None:
        context, mask = batch["context"].to(device).float(), batch["mask"].to(device).bool()
        return drop_context(context, mask, *run.null_context, drop)
    null_prompt = run.accelerator.unwrap_model(run.text_encoder).config.null_prompt
    prompts = drop_prompts(list(batch["prompt"]), drop, null_prompt)
    context, mask = run.text_encoder(prompts)  # the prepared module, so DDP syncs a joint encoder
    return context, mask


def micro_batch_loss(run: TrainingRun, batch: dict) -> torch.Tensor:
    """The diffusion loss of one micro-batch (guidance dropout, posterior sample, t, eps)."""
    size = len(batch["prompt"])
    drop = cfg_drop_mask(size, run.cfg.cfg_dropout, run.generator)
    z0 = batch_latents(batch, run.codec, run.generator, run.accelerator.device)
    with run.accelerator.autocast():
        context, mask = batch_context(run, batch, drop)
        return diffusion_loss(run.denoiser, run.scheduler, z0, context, mask, run.generator,
                              objective=run.cfg.objective)


def check_finite(run: TrainingRun, loss: torch.Tensor) -> None:
    """Stop with TrainingDivergedError when any process's loss is NaN or inf (all ranks stop together)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if run.accelerator.reduce(bad, reduction="sum").item() > 0:
        kept = run.last_checkpoint or "none was written yet"
        raise TrainingDivergedError(
            f"training diverged: the loss is {loss.item()} at step {run.step + 1}; training stopped and the "
            f"last good checkpoint is kept ({kept}). Resume from it with a lower lr, a grad_clip, more "
            "warmup_steps or mixed_precision=no / bf16 instead of fp16."
        )


def optimizer_step(run: TrainingRun) -> dict[str, float]:
    """cfg.grad_accum micro-batches, then one clipped AdamW update, LR step and EMA update."""
    acc, cfg = run.accelerator, run.cfg
    params = [p for m in run.trainable_modules() for p in m.parameters() if p.requires_grad]
    losses, grad_norm = [], math.nan
    for _ in range(cfg.grad_accum):
        batch = next(run.batches)
        run.consumed += run.global_batch
        with acc.accumulate(*run.trainable_modules()):
            loss = micro_batch_loss(run, batch)
            check_finite(run, loss)
            acc.backward(loss)  # divided by grad_accum inside accelerate
            if acc.sync_gradients:
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                grad_norm = float(acc.clip_grad_norm_(params, max_norm))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    run.lr_schedule.step()
    run.ema.update(acc.unwrap_model(run.denoiser))
    run.step += 1
    loss_mean = acc.reduce(torch.stack(losses).mean().reshape(1), reduction="mean").item()
    return {"loss": loss_mean, "grad_norm": grad_norm, "lr": run.lr_schedule.get_last_lr()[0]}
