"""Exponential moving average of the denoiser weights, kept as a full module copy (sampled from directly).

shadow <- decay * shadow + (1 - decay) * theta after every optimizer step (Polyak averaging, as in
DDPM (Ho et al. 2020, app. B) and U-ViT); buffers are copied. The shadow is float32 whatever the
training precision, so small updates are not lost. With ``warmup`` the decay of update n is
min(decay, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage with num_updates, as in LDM):
without it a short run's EMA still holds much of the random init (0.995 ** 200 = 37%).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA of ``model``'s parameters in a detached deep copy (``ema.model``, eval mode, no grad)."""

    def __init__(self, model: nn.Module, decay: float | None, warmup: bool = False) -> None:
        self.decay = 0.0 if decay is None else float(decay)  # None: the copy just follows the weights
        self.warmup = warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.num_updates = 0  # restored from the step on resume (the warm-up depends on it)

    def current_decay(self) -> float:
        """The decay the next update uses (``decay``, or less early on with warm-up)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * theta for parameters; buffers are copied."""
        decay = self.current_decay()
        for shadow, param in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(param.detach().to(shadow.dtype), 1.0 - decay)  # s + (1 - d)(p - s)
        for shadow, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(buf)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow model to ``device``."""
        self.model.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights (CPU, contiguous: ready for safetensors)."""
        return {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights written by :meth:`state_dict`."""
        self.model.load_state_dict(state)
