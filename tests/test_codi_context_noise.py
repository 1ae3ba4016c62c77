"""codi.context_noise: Gaussian noise on the sentence vectors the image trunks read in codi_single training."""

from __future__ import annotations

import pytest
import torch
from test_codi import SIZE, T, images

from cxrgen.config import ScheduleConfig
from cxrgen.config.multiview import CodiStageConfig
from cxrgen.denoisers.codi import CONTEXT, build_codi_denoiser
from cxrgen.errors import ConfigError
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import noisy_context, single_loss

DIM, SLOTS = 16, 3


def context(b: int = 64) -> torch.Tensor:
    """(B, S, D) sentence vectors with the last slot padded (zeros), as the sentence encoder gives them."""
    ctx = torch.randn(b, SLOTS, DIM, generator=torch.Generator().manual_seed(1))
    ctx[:, -1] = 0
    return ctx


def test_noise_lands_on_given_sentences_only_at_the_asked_scale() -> None:
    clean = {CONTEXT: context(), "frontal": images(64)}
    out = noisy_context(clean, 0.3, torch.Generator().manual_seed(0))
    diff = out[CONTEXT] - clean[CONTEXT]
    assert torch.equal(out["frontal"], clean["frontal"])
    assert torch.count_nonzero(out[CONTEXT][:, -1]) == 0  # padded slots stay padding
    assert diff[:, :-1].std().item() == pytest.approx(0.3, rel=0.1)
    assert noisy_context(clean, 0.0) is clean and noisy_context({"frontal": images(2)}, 0.3)["frontal"] is not None
    again = noisy_context(clean, 0.3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[CONTEXT], out[CONTEXT])  # drawn from the run's generator


def test_the_image_trunks_read_the_noisy_context_and_zero_is_the_old_loss(monkeypatch) -> None:
    model = build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1,
                                sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T,
                                context_dim=DIM, context_tokens=SLOTS)
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    clean = {"frontal": images(8), "lateral": -images(8), "report": torch.randn(8, 2, 8), CONTEXT: context(8)}
    seen: list[torch.Tensor] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda lat, *a, **k: seen.append(lat[CONTEXT]) or forward(lat, *a, **k))
    loss = lambda **kw: single_loss(model, sched, clean, 0.0, torch.Generator().manual_seed(0), **kw)[1]  # noqa: E731
    base = loss()
    assert all(torch.equal(c, clean[CONTEXT]) for c in seen)
    seen.clear()
    assert loss(context_noise=0.0) == base
    seen.clear()
    noisy = loss(context_noise=0.5)
    assert seen and all(not torch.equal(c, clean[CONTEXT]) for c in seen)
    assert all(torch.count_nonzero(c[:, -1]) == 0 for c in seen)
    assert noisy["frontal"] != base["frontal"]


def test_the_option_is_off_by_default_and_checked() -> None:
    assert CodiStageConfig().context_noise == 0.0
    assert CodiStageConfig(report_condition="text", context_noise=0.2).context_noise == 0.2
    with pytest.raises(ConfigError, match="report_condition: text"):
        CodiStageConfig(context_noise=0.2)  # the latent report condition has no sentence vectors
    with pytest.raises(ConfigError, match="std >= 0"):
        CodiStageConfig(report_condition="text", context_noise=-0.1)
