"""codi.clip_per_trunk: each per-modality denoiser's gradient is clipped on its own (tiny CoDi model)."""

from __future__ import annotations

import dataclasses

import torch

from cxrgen.config import ScheduleConfig
from cxrgen.config.multiview import CodiStageConfig
from cxrgen.denoisers.codi import CodiXR, build_codi_denoiser
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import clip_groups, single_loss
from cxrgen.train.joint import _train, clip_gradients

T = 100


def tiny_model() -> CodiXR:
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1,
                               sample_size=16, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T)


def with_grads(model: CodiXR, report_scale: float) -> CodiXR:
    """Every trunk's gradient all ones; the report trunk's times ``report_scale``."""
    for name, p in model.named_parameters():
        p.grad = torch.ones_like(p) * (report_scale if name.startswith("trunks.report.") else 1.0)
    return model


def norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def test_per_trunk_clipping_keeps_the_frontal_step_apart_from_the_report_trunk() -> None:
    frontal = lambda m: list(m.trunks["frontal"].parameters())  # noqa: E731
    # one global norm (the default): a larger report gradient shrinks the frontal trunk's clipped gradient
    small, large = with_grads(tiny_model(), 1.0), with_grads(tiny_model(), 100.0)
    clip_gradients(small)
    clip_gradients(large)
    assert norm(frontal(large)) < 0.1 * norm(frontal(small))
    assert abs(norm(list(large.parameters())) - 1.0) < 1e-4
    # per trunk: every trunk's (and the bridges') gradient at norm <= 1, the frontal's the same either way
    small, large = with_grads(tiny_model(), 1.0), with_grads(tiny_model(), 100.0)
    clip_gradients(small, clip_groups(small))
    clip_gradients(large, clip_groups(large))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(frontal(small), frontal(large), strict=True))
    for group in clip_groups(large):
        assert norm(group) <= 1.0 + 1e-4
    assert abs(norm(frontal(large)) - 1.0) < 1e-4
    covered = {id(p) for group in clip_groups(large) for p in group}
    assert covered == {id(p) for p in large.parameters()}, "every parameter is clipped in exactly one group"


def test_the_option_is_off_by_default_and_trains_through_the_codi_loop() -> None:
    assert CodiStageConfig().clip_per_trunk is False
    cc = dataclasses.replace(CodiStageConfig(denoiser="codi-tiny", steps=60, batch_size=8, lr=5e-3, warmup_steps=1,
                                             ema_decay=0.0, log_every=60), clip_per_trunk=True)
    model = tiny_model()
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    gen = torch.Generator().manual_seed(1)
    clean = {"frontal": torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1,
             "lateral": torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, "report": torch.randn(8, 2, 8, generator=gen)}

    def loss(net: CodiXR, batch: dict, g: torch.Generator):
        return single_loss(net, sched, batch, 0.1, g)

    def held_out() -> float:
        with torch.no_grad():
            return float(sum(loss(model, clean, torch.Generator().manual_seed(k))[0] for k in range(3)))

    before = held_out()
    _train(model, sched, clean, cc, torch.Generator().manual_seed(0), False, loss, model.trunk_parameters(),
           clip_groups=clip_groups(model))
    assert held_out() < 0.9 * before
