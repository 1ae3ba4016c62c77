"""The diffusion loss on one batch: noising, targets, classifier-free guidance dropout, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrgen.config import DenoiserConfig, ScheduleConfig
from cxrgen.denoisers import build_denoiser
from cxrgen.errors import ConfigError
from cxrgen.objective import (
    cfg_drop_mask,
    diffusion_loss,
    diffusion_target,
    drop_context,
    drop_prompts,
)
from cxrgen.samplers import training_scheduler

SCHEDULE = ScheduleConfig(num_train_timesteps=100)
B, C, S, L, D = 6, 4, 8, 5, 16


class Recorder(nn.Module):
    """A stand-in denoiser that records its inputs and predicts zeros."""

    prediction_type = "epsilon"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def forward(self, z_t, t, context, mask):
        self.calls.append((z_t.clone(), t.clone(), context, mask))
        return torch.zeros_like(z_t)


def _abar(t: torch.Tensor) -> torch.Tensor:
    """alpha-bar_t of the scaled-linear schedule, computed here independently of diffusers."""
    betas = torch.linspace(SCHEDULE.beta_start**0.5, SCHEDULE.beta_end**0.5, SCHEDULE.num_train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[t].float()[:, None, None, None]  # (B, 1, 1, 1)


def test_noised_latent_and_epsilon_target() -> None:
    z0 = torch.randn(B, C, S, S, generator=torch.Generator().manual_seed(1))
    context, mask = torch.randn(B, L, D), torch.ones(B, L, dtype=torch.bool)
    den = Recorder()
    gen = torch.Generator().manual_seed(7)
    loss = diffusion_loss(den, training_scheduler(SCHEDULE, "epsilon"), z0, context, mask, gen)
    # the same draws, replayed: t first, then eps
    replay = torch.Generator().manual_seed(7)
    t = torch.randint(0, SCHEDULE.num_train_timesteps, (B,), generator=replay)
    eps = torch.randn(z0.shape, generator=replay)
    z_t, t_seen, ctx_seen, _ = den.calls[0]
    assert torch.equal(t_seen, t) and ctx_seen is context
    abar = _abar(t)
    torch.testing.assert_close(z_t, abar.sqrt() * z0 + (1 - abar).sqrt() * eps)  # DDPM eq. 4
    torch.testing.assert_close(loss, (eps**2).mean())  # zero prediction: MSE = mean eps^2
    assert loss.ndim == 0


def test_v_prediction_and_sample_targets() -> None:
    gen = torch.Generator().manual_seed(3)
    z0, eps = torch.randn(B, C, S, S, generator=gen), torch.randn(B, C, S, S, generator=gen)
    t = torch.randint(0, SCHEDULE.num_train_timesteps, (B,), generator=gen)
    abar = _abar(t)
    v = diffusion_target(training_scheduler(SCHEDULE, "v_prediction"), z0, eps, t, "v_prediction")
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * z0)  # Salimans & Ho 2022
    sched = training_scheduler(SCHEDULE, "sample")
    assert torch.equal(diffusion_target(sched, z0, eps, t, "sample"), z0)
    assert torch.equal(diffusion_target(sched, z0, eps, t, "epsilon"), eps)
    with pytest.raises(ConfigError, match="prediction_type"):
        diffusion_target(sched, z0, eps, t, "score")


def test_loss_uses_the_denoisers_prediction_type() -> None:
    z0 = torch.randn(B, C, S, S, generator=torch.Generator().manual_seed(1))
    context, mask = torch.randn(B, L, D), torch.ones(B, L, dtype=torch.bool)
    den = Recorder()
    den.prediction_type = "sample"
    loss = diffusion_loss(den, training_scheduler(SCHEDULE, "sample"), z0, context, mask,
                          torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, (z0**2).mean())


def test_cfg_dropout_rate_and_replacement() -> None:
    n, p = 20000, 0.3
    drop = cfg_drop_mask(n, p, torch.Generator().manual_seed(0))
    assert abs(drop.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert not cfg_drop_mask(n, 0.0, torch.Generator().manual_seed(0)).any()
    # the generator advances the same whatever p is (resume reproducibility)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    cfg_drop_mask(8, 0.0, g1), cfg_drop_mask(8, 0.9, g2)
    assert torch.equal(g1.get_state(), g2.get_state())

    keep_drop = torch.tensor([False, True, False])
    assert drop_prompts(["a", "b", "c"], keep_drop, "") == ["a", "", "c"]
    context, mask = torch.randn(3, L, D), torch.ones(3, L, dtype=torch.bool)
    null_c, null_m = torch.zeros(1, L, D), torch.zeros(1, L, dtype=torch.bool)
    null_m[0, 0] = True
    new_c, new_m = drop_context(context, mask, null_c, null_m, keep_drop)
    assert torch.equal(new_c[1], null_c[0]) and torch.equal(new_m[1], null_m[0])
    assert torch.equal(new_c[[0, 2]], context[[0, 2]]) and new_m[[0, 2]].all()
    with pytest.raises(ConfigError, match="pad_to_max_length"):
        drop_context(context, mask, null_c[:, :2], null_m[:, :2], keep_drop)


def test_tiny_denoiser_learns() -> None:
    """AdamW on a tiny U-ViT lowers the loss measured with fixed draws (t, eps) over 50 steps."""
    cfg = DenoiserConfig(name="uvit-tiny", in_channels=C, sample_size=S, context_dim=D, context_len=L)
    den = build_denoiser(cfg, generator=torch.Generator().manual_seed(0))
    sched = training_scheduler(SCHEDULE, "epsilon")
    data = torch.Generator().manual_seed(1)
    z0 = torch.randn(B, C, 1, 1, generator=data).expand(B, C, S, S).contiguous()  # smooth latents
    context, mask = torch.randn(B, L, D, generator=data), torch.ones(B, L, dtype=torch.bool)

    def fixed_loss() -> float:
        with torch.no_grad():
            return diffusion_loss(den, sched, z0, context, mask, torch.Generator().manual_seed(99)).item()

    before = fixed_loss()
    opt = torch.optim.AdamW(den.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        opt.zero_grad()
        diffusion_loss(den, sched, z0, context, mask, gen).backward()
        opt.step()
    assert fixed_loss() < 0.8 * before
