"""Training objectives as configuration: rectified flow, Min-SNR-gamma weighting, MaskDiT token dropping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny_models import PROMPTS, tiny_pipeline
from torch import nn

from cxrgen.config import DenoiserConfig, ObjectiveConfig, SamplingConfig, ScheduleConfig, TrainConfig, from_dict
from cxrgen.denoisers import build_denoiser
from cxrgen.errors import ConfigError
from cxrgen.objective import (
    check_objective,
    diffusion_loss,
    draw_token_keep,
    kept_pixels,
    min_snr_weights,
    sample_flow_sigmas,
    snr,
)
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import FLOW_SCHEDULERS, make_scheduler, training_scheduler

T = 100
SCHEDULE = ScheduleConfig(num_train_timesteps=T)
FLOW = ObjectiveConfig(kind="flow", timestep_sampling="logit_normal")
B, C, S, L, D = 6, 4, 8, 5, 16


class Recorder(nn.Module):
    """A stand-in denoiser that records its inputs and predicts zeros (optionally takes ``keep``)."""

    def __init__(self, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.prediction_type = prediction_type
        self.calls: list[dict] = []

    def forward(self, z_t, t, context, mask, keep=None):
        self.calls.append({"z_t": z_t.clone(), "t": t.clone(), "keep": keep})
        return torch.zeros_like(z_t)


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z0 = torch.randn(B, C, S, S, generator=torch.Generator().manual_seed(seed))
    return z0, torch.randn(B, L, D), torch.ones(B, L, dtype=torch.bool)


# --- rectified flow ---------------------------------------------------------------------------
def test_flow_path_target_time_input_and_draw_order() -> None:
    """x_s = (1 - s) x0 + s eps, target eps - x0, the denoiser sees t = s * T; s drawn before eps."""
    z0, context, mask = _batch()
    den = Recorder("flow_prediction")
    sched = training_scheduler(SCHEDULE, "flow_prediction", "flow")
    loss = diffusion_loss(den, sched, z0, context, mask, torch.Generator().manual_seed(7), objective=FLOW)
    replay = torch.Generator().manual_seed(7)
    s = torch.sigmoid(torch.randn((B,), generator=replay))  # logit-normal(0, 1)
    eps = torch.randn(z0.shape, generator=replay)
    seen = den.calls[0]
    torch.testing.assert_close(seen["t"], s * T)
    s4 = s[:, None, None, None]
    torch.testing.assert_close(seen["z_t"], (1 - s4) * z0 + s4 * eps)
    torch.testing.assert_close(loss, ((eps - z0) ** 2).mean())  # zero prediction: MSE to v = eps - x0


def test_logit_normal_and_uniform_sigmas() -> None:
    gen = torch.Generator().manual_seed(0)
    s = sample_flow_sigmas(20000, dataclasses.replace(FLOW, logit_mean=0.5, logit_std=0.7), gen)
    logit = torch.log(s / (1 - s))
    assert abs(logit.mean().item() - 0.5) < 0.03 and abs(logit.std().item() - 0.7) < 0.03
    u = sample_flow_sigmas(20000, dataclasses.replace(FLOW, timestep_sampling="uniform"), gen)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert abs(s.std().item() - u.std().item()) > 0.05  # logit-normal concentrates mid-path


class FlowOracle(nn.Module):
    """Exact velocity when all data is one latent x0(context): v = (z - x0) / s, s = t / T.

    x0(context) is the first context feature broadcast, so conditional and unconditional differ.
    """

    def __init__(self, spec, num_train_timesteps: int) -> None:
        super().__init__()
        self.spec, self.T = spec, num_train_timesteps
        self.prediction_type = spec.prediction_type
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, z_t, t, context, mask=None):
        x0 = context[:, 0, 0].view(-1, 1, 1, 1).to(z_t)  # (B, 1, 1, 1)
        return (z_t - x0) / (t.float().view(-1, 1, 1, 1) / self.T)


@pytest.mark.parametrize("name", ["flow-euler", "flow-heun", "flow-dpm++"])
def test_flow_samplers_and_guidance_reach_the_guided_data(tmp_path: Path, name: str) -> None:
    """Fails if t != sigma * T anywhere between scheduler, guidance and denoiser, or if CFG is mis-signed."""
    pipe = tiny_pipeline(tmp_path)
    sched = training_scheduler(ScheduleConfig(), "flow_prediction", "flow")
    spec = dataclasses.replace(pipe.denoiser.spec, prediction_type="flow_prediction")
    toy = CXRPipeline(pipe.text_encoder, pipe.autoencoder, FlowOracle(spec, 1000), sched, pipe.image_size,
                      dataclasses.replace(pipe.sampling, sampler=name))
    context, mask = torch.full((2, 3, spec.context_dim), 0.7), torch.ones(2, 3, dtype=torch.bool)
    uncond = torch.full((2, 3, spec.context_dim), -0.2)
    w = 3.0
    settings = dataclasses.replace(toy.sampling, sampler=name, steps=7, guidance_scale=w)
    latents = toy._denoise(context, mask, uncond, mask, settings, torch.Generator().manual_seed(0), progress=False)
    # Euler and Heun are exact on straight paths; DPM-Solver++ passes integer timesteps (t = floor(sigma T))
    atol = 0.05 if name == "flow-dpm++" else 1e-4
    torch.testing.assert_close(latents, torch.full_like(latents, -0.2 + w * (0.7 + 0.2)), atol=atol, rtol=0)


def test_saved_flow_model_samples_the_same_after_loading(tmp_path: Path) -> None:
    pipe = tiny_pipeline(tmp_path, SamplingConfig(sampler="flow-heun", steps=3),
                         overrides=["denoiser.prediction_type=flow_prediction"])
    before = pipe(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    pipe.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    loaded = CXRPipeline.from_pretrained(tmp_path / "model")
    assert isinstance(loaded.scheduler, FLOW_SCHEDULERS) and loaded.sampling.sampler == "flow-heun"
    after = loaded(PROMPTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(after.images, before.images)
    with pytest.raises(ConfigError, match="cannot sample this rectified-flow model"):
        loaded(PROMPTS, num_inference_steps=3, sampler="dpm++", progress=False)


def test_objective_and_sampler_families_never_mix() -> None:
    with pytest.raises(ConfigError, match="flow_prediction"):
        training_scheduler(SCHEDULE, "epsilon", "flow")
    with pytest.raises(ConfigError, match="flow_prediction"):
        training_scheduler(SCHEDULE, "flow_prediction", "ddpm")
    with pytest.raises(ConfigError, match="cannot sample this DDPM model"):
        make_scheduler("flow-euler", training_scheduler(SCHEDULE, "epsilon"))
    with pytest.raises(ConfigError, match="flow-euler"):
        from_dict(TrainConfig, {"objective": {"kind": "flow"}})  # the default sampler is dpm++
    with pytest.raises(ConfigError, match="dpm\\+\\+"):
        from_dict(TrainConfig, {"sampling": {"sampler": "flow-euler"}})
    with pytest.raises(ConfigError, match="logit_normal"):
        ObjectiveConfig(kind="flow", loss_weighting="min_snr")
    with pytest.raises(ConfigError, match="kind=flow"):
        ObjectiveConfig(timestep_sampling="logit_normal")
    with pytest.raises(ConfigError, match="objective.kind"):
        ObjectiveConfig(kind="edm")


# --- Min-SNR-gamma ----------------------------------------------------------------------------
def test_min_snr_weights_follow_the_formula_on_known_alphas() -> None:
    sched = training_scheduler(SCHEDULE, "epsilon")
    t = torch.tensor([0, 10, 50, 99])
    betas = torch.linspace(SCHEDULE.beta_start**0.5, SCHEDULE.beta_end**0.5, T, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[t]  # computed here independently of diffusers
    ratio = (abar / (1 - abar)).float()
    torch.testing.assert_close(snr(sched, t), ratio, rtol=1e-4, atol=0)  # diffusers keeps abar in float32
    known = torch.tensor([0.1, 1.0, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weights(known, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weights(known, 5.0, "v_prediction"),
                               torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 51]))
    torch.testing.assert_close(min_snr_weights(known, 5.0, "sample"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weights(known, 2.0, "epsilon"), torch.tensor([1.0, 1.0, 0.4, 0.04]))
    with pytest.raises(ConfigError, match="min_snr"):
        min_snr_weights(known, 5.0, "flow_prediction")


@pytest.mark.parametrize("target", ["epsilon", "v_prediction", "sample"])
def test_min_snr_loss_weights_each_sample(target: str) -> None:
    z0, context, mask = _batch()
    sched = training_scheduler(SCHEDULE, target)
    objective = ObjectiveConfig(loss_weighting="min_snr", min_snr_gamma=5.0)
    loss = diffusion_loss(Recorder(target), sched, z0, context, mask, torch.Generator().manual_seed(3),
                          objective=objective)
    replay = torch.Generator().manual_seed(3)
    t = torch.randint(0, T, (B,), generator=replay)
    eps = torch.randn(z0.shape, generator=replay)
    goal = {"epsilon": eps, "sample": z0, "v_prediction": sched.get_velocity(z0, eps, t)}[target]
    weights = min_snr_weights(snr(sched, t), 5.0, target)
    torch.testing.assert_close(loss, (weights * (goal**2).flatten(1).mean(1)).mean())


def test_objective_off_is_the_plain_loss_and_draws() -> None:
    z0, context, mask = _batch()
    sched = training_scheduler(SCHEDULE, "epsilon")
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    plain = diffusion_loss(Recorder(), sched, z0, context, mask, g1)
    configured = diffusion_loss(Recorder(), sched, z0, context, mask, g2, objective=ObjectiveConfig())
    assert torch.equal(plain, configured) and torch.equal(g1.get_state(), g2.get_state())


# --- MaskDiT-style token dropping -------------------------------------------------------------
def _uvit(final_conv: bool = True) -> nn.Module:
    cfg = DenoiserConfig(name="uvit-tiny", in_channels=C, sample_size=S, context_dim=D, context_len=L,
                         kwargs={"final_conv": final_conv, "patch_size": 2})
    return build_denoiser(cfg, generator=torch.Generator().manual_seed(0)).eval()


def test_uvit_with_every_token_kept_equals_the_inference_path() -> None:
    den = _uvit()
    z, ctx = torch.randn(2, C, S, S), torch.randn(2, L, D)
    keep = torch.arange(den.grid**2).expand(2, -1)
    torch.testing.assert_close(den(z, torch.tensor([3, 9]), ctx, None, keep=keep),
                               den(z, torch.tensor([3, 9]), ctx, None))


def test_dropped_tokens_do_not_reach_the_kept_ones() -> None:
    """Kept outputs ignore dropped inputs (through every block and long skip); dropped outputs are 0."""
    den = _uvit(final_conv=False)
    n = den.grid**2
    keep = draw_token_keep(2, n, ObjectiveConfig(mask_ratio=0.5), torch.Generator().manual_seed(0))
    assert keep.shape == (2, n // 2) and len(set(keep[0].tolist())) == n // 2
    pixels = kept_pixels(keep, den.grid, 2)  # (2, 1, 8, 8)
    assert pixels.sum().item() == 2 * (n // 2) * 4
    z, ctx, t = torch.randn(2, C, S, S), torch.randn(2, L, D), torch.tensor([5, 50])
    changed = z + 10 * (1 - pixels) * torch.randn_like(z)  # only the dropped patches differ
    a, b = den(z, t, ctx, None, keep=keep), den(changed, t, ctx, None, keep=keep)
    torch.testing.assert_close(a * pixels, b * pixels)
    assert (a * (1 - pixels)).abs().max() == 0 and (a * pixels).abs().max() > 0


def test_masked_loss_covers_the_kept_patches_and_keeps_the_draw_order() -> None:
    den = _uvit()
    z0, context, mask = _batch()
    sched = training_scheduler(SCHEDULE, "epsilon")
    masked = ObjectiveConfig(mask_ratio=0.5, masked_fraction=1.0)
    rec = Recorder()
    rec.grid, rec.config = den.grid, den.config  # what the objective reads off a U-ViT
    g1 = torch.Generator().manual_seed(2)
    loss = diffusion_loss(rec, sched, z0, context, mask, g1, objective=masked)
    replay = torch.Generator().manual_seed(2)
    torch.randint(0, T, (B,), generator=replay)
    eps = torch.randn(z0.shape, generator=replay)
    keep = draw_token_keep(B, den.grid**2, masked, replay)
    assert torch.equal(rec.calls[0]["keep"], keep) and torch.equal(g1.get_state(), replay.get_state())
    pixels = kept_pixels(keep, den.grid, 2)
    torch.testing.assert_close(loss, ((eps**2 * pixels).flatten(1).sum(1) / (pixels.flatten(1).sum(1) * C)).mean())
    # an unmasked micro-batch (masked_fraction=0) sees every token but advances the generator the same
    g2 = torch.Generator().manual_seed(2)
    diffusion_loss(rec, sched, z0, context, mask, g2, objective=dataclasses.replace(masked, masked_fraction=0.0))
    assert rec.calls[-1]["keep"] is None and torch.equal(g2.get_state(), g1.get_state())


def test_masking_needs_a_uvit() -> None:
    check_objective(ObjectiveConfig(mask_ratio=0.5), _uvit())
    with pytest.raises(ConfigError, match="U-ViT"):
        check_objective(ObjectiveConfig(mask_ratio=0.5), nn.Linear(2, 2))


# --- end to end: train, resume, load, sample, score ---------------------------------------------
@pytest.mark.slow  # ~10 s on 2 busy cores
def test_flow_masked_training_resumes_exactly_and_ships_a_flow_model(tmp_path: Path) -> None:
    """A flow + MaskDiT run interrupted after step 2 and resumed ends with the same weights; its saved
    model samples with its flow sampler after from_pretrained and gets a conditioning gain."""
    from train_helpers import tiny_config, tiny_config_dict

    from cxrgen.evaluate.conditioning import conditioning_gain
    from cxrgen.train.trainer import train

    model = tiny_config_dict(tmp_path)["model"]
    model["denoiser"]["prediction_type"] = "flow_prediction"
    fields = {"steps": 4, "checkpoint_every": 2, "model": model, "sampling": {"sampler": "flow-euler", "steps": 3},
              "objective": {"kind": "flow", "timestep_sampling": "logit_normal", "mask_ratio": 0.5,
                            "masked_fraction": 0.5}}
    full = train(tiny_config(tmp_path, out_dir=str(tmp_path / "full"), **fields))
    cut = tiny_config(tmp_path, out_dir=str(tmp_path / "cut"), **{**fields, "steps": 2})
    train(cut)
    resumed = train(dataclasses.replace(cut, steps=4), resume="latest")
    assert resumed["start_step"] == 2 and resumed["weights_sha256"] == full["weights_sha256"]
    pipe = CXRPipeline.from_pretrained(full["model_dir"])
    assert isinstance(pipe.scheduler, FLOW_SCHEDULERS) and pipe.denoiser.prediction_type == "flow_prediction"
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), progress=False).images
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    gain = conditioning_gain(pipe, images, PROMPTS, n_timesteps=2)
    assert gain["loss_text"] > 0 and gain["loss_null"] > 0
