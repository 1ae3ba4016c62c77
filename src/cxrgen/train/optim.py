"""AdamW over the trainable parts (own learning rate for a joint text encoder) and the LR schedule."""

from __future__ import annotations

import torch
from diffusers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from cxrgen.config import TrainConfig
from cxrgen.errors import ConfigError


def build_optimizer(cfg: TrainConfig, denoiser: nn.Module, text_encoder: nn.Module | None) -> torch.optim.AdamW:
    """AdamW with one group for the denoiser (cfg.lr) and one for a trainable text encoder (cfg.text_lr)."""
    groups = [{"params": [p for p in denoiser.parameters() if p.requires_grad], "lr": cfg.lr, "name": "denoiser"}]
    if text_encoder is not None:
        params = [p for p in text_encoder.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the text encoder is set trainable but has no trainable parameters")
        lr = cfg.lr if cfg.text_lr is None else cfg.text_lr
        groups.append({"params": params, "lr": lr, "name": "text_encoder"})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_lr_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Linear warm-up over cfg.warmup_steps, then constant or half-cosine to 0 at cfg.steps (diffusers')."""
    if cfg.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
