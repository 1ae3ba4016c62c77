"""Samplers by name (diffusers schedulers from the training config) and classifier-free guidance."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler
from tiny_models import PROMPTS, tiny_pipeline
from torch import nn

from cxrgen.config import DDPM_SAMPLER_NAMES, ScheduleConfig
from cxrgen.errors import ConfigError
from cxrgen.guidance import combine, guided_prediction
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import SAMPLERS, make_scheduler, training_scheduler

SCHEDULE = ScheduleConfig(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> CXRPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("samplers"))


# --- samplers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DDPM_SAMPLER_NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampler_shares_training_schedule(name: str, prediction_type: str) -> None:
    train = training_scheduler(SCHEDULE, prediction_type)
    sampler = make_scheduler(name, train)
    assert isinstance(sampler, SAMPLERS[name][0])
    assert sampler.config.prediction_type == prediction_type
    assert torch.equal(sampler.alphas_cumprod, train.alphas_cumprod)
    sampler.set_timesteps(4)
    if name in ("ddpm", "dpm++", "euler"):  # trailing spacing: starts from pure noise
        assert int(sampler.timesteps[0]) == SCHEDULE.num_train_timesteps - 1


def test_training_scheduler_fields() -> None:
    train = training_scheduler(SCHEDULE, "epsilon")
    assert isinstance(train, DDPMScheduler)
    assert train.config.beta_schedule == "linear" and train.config.num_train_timesteps == 1000
    assert train.betas[0].item() == pytest.approx(1e-4) and train.betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="prediction_type"):
        training_scheduler(SCHEDULE, "noise")


def test_unknown_sampler_lists_names() -> None:
    with pytest.raises(ConfigError, match="ddim.*dpm\\+\\+"):
        make_scheduler("heun", training_scheduler(SCHEDULE, "epsilon"))


@pytest.mark.parametrize("name", DDPM_SAMPLER_NAMES)
def test_every_sampler_runs_in_the_pipeline(pipe: CXRPipeline, name: str) -> None:
    out = pipe(PROMPTS, num_inference_steps=3, sampler=name, generator=torch.Generator().manual_seed(0),
               progress=False)
    assert out.images.shape == (2, 1, 32, 32) and torch.isfinite(out.images).all()
    again = pipe(PROMPTS, num_inference_steps=3, sampler=name, generator=torch.Generator().manual_seed(0),
                 progress=False)
    assert torch.equal(out.images, again.images)


class PointMassOracle(nn.Module):
    """The exact denoiser when all data is one latent x0: eps = (z_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, spec, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.spec, self.x0, self.abar = spec, x0, alphas_cumprod
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device and dtype
        self.first_input_std: float | None = None

    def forward(self, z_t, t, context, mask=None):
        if self.first_input_std is None:
            self.first_input_std = z_t.std().item()
        abar = self.abar[t.long()].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        eps = (z_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        if self.spec.prediction_type == "sample":
            return self.x0.expand_as(z_t)
        if self.spec.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            return abar.sqrt() * eps - (1 - abar).sqrt() * self.x0
        return eps


@pytest.mark.parametrize("name", DDPM_SAMPLER_NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_samplers_reach_the_data_with_an_exact_denoiser(pipe: CXRPipeline, name: str, prediction_type: str) -> None:
    """Fails if a sampler got the prediction type, init_noise_sigma or scale_model_input (Euler) wrong."""
    if (name, prediction_type) == ("pndm", "sample"):
        with pytest.raises(ConfigError, match="pndm sampler needs an epsilon"):
            make_scheduler("pndm", training_scheduler(ScheduleConfig(), "sample"))
        return
    train = training_scheduler(ScheduleConfig(), prediction_type)
    cfg = dataclasses.replace(pipe.denoiser.spec, prediction_type=prediction_type)
    x0 = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=torch.Generator().manual_seed(1))
    oracle = PointMassOracle(cfg, x0, train.alphas_cumprod)
    toy = CXRPipeline(pipe.text_encoder, pipe.autoencoder, oracle, train, pipe.image_size, pipe.sampling)
    context, mask, _, _ = toy._encode(PROMPTS[:1], dataclasses.replace(pipe.sampling, guidance_scale=1.0))
    # 7 steps: not a divisor of 1000, so a stride that disagrees with the timesteps would show.
    # PNDM combines raw v outputs over steps (diffusers), exact only as steps grow: RoentGen's 75.
    steps, atol = (75, 1e-2) if (name, prediction_type) == ("pndm", "v_prediction") else (7, 1e-4)
    settings = dataclasses.replace(pipe.sampling, sampler=name, steps=steps, guidance_scale=1.0)
    latents = toy._denoise(context.expand(4, -1, -1), mask.expand(4, -1), None, None, settings,
                           torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(latents, x0.expand(4, -1, -1, -1), atol=atol, rtol=0)
    assert oracle.first_input_std == pytest.approx(1.0, abs=0.15)  # noise at full scale entering the net


# --- guidance ---------------------------------------------------------------------------------
class ContextEcho(nn.Module):
    """A toy denoiser whose output is the first context feature, broadcast: cond and uncond differ."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, z_t, t, context, mask=None):
        self.batches.append(z_t.shape[0])
        return z_t * 0 + context[:, 0, 0].view(-1, 1, 1, 1)  # (B, C, h, w)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 7.0])
def test_guidance_sign_and_one_batched_call(w: float) -> None:
    toy, batch, length = ContextEcho(), 3, 5
    z = torch.zeros(batch, 4, 2, 2)
    cond = torch.full((batch, length, 8), 1.0)  # conditional prediction: 1
    uncond = torch.full((batch, length, 8), -0.5)  # unconditional prediction: -0.5
    mask = torch.ones(batch, length, dtype=torch.bool)
    out = guided_prediction(toy, z, torch.tensor(500), cond, mask, uncond, mask, w)
    torch.testing.assert_close(out, torch.full_like(z, -0.5 + w * 1.5))  # uncond + w (cond - uncond)
    assert toy.batches == ([batch] if w == 1.0 else [2 * batch])  # w = 1 skips the unconditional pass
    if w > 1:  # further from uncond than the conditional output, on the conditional side
        assert (out > 1.0).all()


def test_guidance_pads_contexts_of_different_length() -> None:
    toy = ContextEcho()
    cond, uncond = torch.ones(2, 6, 8), -torch.ones(2, 3, 8)
    mask_c, mask_u = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    out = guided_prediction(toy, torch.zeros(2, 4, 2, 2), torch.tensor(10), cond, mask_c, uncond, mask_u, 2.0)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    assert torch.equal(combine(torch.zeros(1), torch.ones(1), 4.0), torch.full((1,), 4.0))


def test_negative_prompt_replaces_the_null_prompt(pipe: CXRPipeline) -> None:
    """negative = the prompt itself makes cond == uncond, so any w gives the unguided (w = 1) image."""
    def run(**kw) -> torch.Tensor:
        return pipe(PROMPTS[:1], generator=torch.Generator().manual_seed(2), progress=False, **kw).images

    unguided = run(guidance_scale=1.0)
    torch.testing.assert_close(run(guidance_scale=5.0, negative_prompt=PROMPTS[0]), unguided, atol=1e-5, rtol=0)
    null = pipe.text_encoder.config.null_prompt
    torch.testing.assert_close(run(guidance_scale=5.0, negative_prompt=null), run(guidance_scale=5.0))
    assert not torch.allclose(run(guidance_scale=5.0), unguided, atol=1e-3)
