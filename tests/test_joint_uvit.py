"""The joint U-ViT (UniDiffuser-style), its loss, and the any-to-any pipeline, on tiny random parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cxrgen.autoencoder import IdentityCodec
from cxrgen.config import AutoencoderConfig, SamplingConfig, ScheduleConfig
from cxrgen.denoisers.joint_uvit import JointUViT
from cxrgen.denoisers.registry import build_joint_denoiser, load_denoiser
from cxrgen.errors import ConfigError
from cxrgen.pipelines import ISSUE_MODES, Mode, MultiViewPipeline
from cxrgen.samplers import training_scheduler
from cxrgen.text.report_standin import HashedReportCodec
from cxrgen.train.joint_loss import ABSENT, GIVEN, NOISED, draw_roles, joint_loss

SIZE = 16  # pixels = latent side (identity codec)
REPORTS = ["Small left pleural effusion.", "No pleural effusion. Normal heart size.", "Right lower lobe consolidation."]


def tiny_pipeline(seed: int = 0, modes: tuple[str, ...] | None = None) -> MultiViewPipeline:
    den = build_joint_denoiser("joint-uvit-tiny", generator=torch.Generator().manual_seed(seed), in_channels=1,
                               sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=100)
    codec = IdentityCodec(AutoencoderConfig(kind="identity"))
    report = HashedReportCodec(tokens=2, token_dim=8, buckets=64).set_bank(REPORTS)
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=100), "epsilon")
    return MultiViewPipeline(den, codec, report, sched, image_size=SIZE, modes=modes,
                             sampling=SamplingConfig(sampler="ddim", steps=3, guidance_scale=2.0))


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_timesteps_of_the_modalities_are_drawn_independently() -> None:
    roles = draw_roles(4000, 3, 1000, 0.2, 0.1, torch.Generator().manual_seed(0))
    for j in range(3):
        share = (roles.role[:, j] == GIVEN).float().mean()
        assert 0.15 < share < 0.27 and (roles.role[:, j] == ABSENT).float().mean() > 0.05
    assert (roles.role == NOISED).any(dim=1).all(), "every sample must have a modality to learn from"
    steps = roles.step.float()
    corr = torch.corrcoef(steps.T)  # (3, 3)
    assert corr.triu(1).abs().max() < 0.06, "per-modality steps must not be tied"
    assert (roles.step[:, 0] != roles.step[:, 1]).float().mean() > 0.95


def test_a_few_training_steps_lower_the_loss() -> None:
    pipe = tiny_pipeline()
    model, sched = pipe.denoiser, pipe.scheduler
    clean = {"frontal": images(8), "lateral": -images(8), "report": pipe.report_codec.encode(REPORTS * 3)[:8]}

    def held_out_loss() -> float:  # the same roles, steps and noise every time
        with torch.no_grad():
            return float(sum(joint_loss(model, sched, clean, 0.2, 0.1, torch.Generator().manual_seed(k))[0]
                             for k in range(4)))

    before = held_out_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, per = joint_loss(model, sched, clean, 0.2, 0.1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.8 * before
    assert set(per) <= {"frontal", "lateral", "report"}


@pytest.mark.parametrize("mode", ISSUE_MODES)
def test_every_mode_runs_and_returns_its_modalities(mode: str) -> None:
    pipe = tiny_pipeline()
    m = Mode.parse(mode)
    given = {"frontal": images(2), "lateral": images(2, 2), "report": REPORTS[:2]}
    out = pipe(**{k: given[k] for k in m.given}, generate=m.generated, progress=False)
    assert out.generated == m.generated and out.given == m.given
    for view in ("frontal", "lateral"):
        present = view in m.given or view in m.generated
        assert (getattr(out, view) is not None) == present
        if present:
            assert getattr(out, view).shape == (2, 1, SIZE, SIZE)
    if "report" in m.generated:
        assert all(r in REPORTS for r in out.report) and out.report_latent.shape == (2, 2, 8)


def test_the_given_modality_is_not_changed_and_guidance_acts() -> None:
    pipe = tiny_pipeline()
    frontal = images(2)
    out = pipe(frontal=frontal, generate=["lateral"], progress=False)
    assert torch.equal(out.frontal, frontal)
    again = pipe(frontal=frontal, generate=["lateral"], progress=False)
    assert torch.equal(out.lateral, again.lateral), "same seed, same sample"
    unguided = pipe(frontal=frontal, generate=["lateral"], guidance_scale=1.0, progress=False)
    assert not torch.allclose(out.lateral, unguided.lateral), "guidance against the marginal changes the sample"
    other = pipe(frontal=-frontal, generate=["lateral"], guidance_scale=1.0, progress=False)
    assert not torch.allclose(other.lateral, unguided.lateral), "the condition reaches the generated view"


def test_bad_inputs_and_untrained_modes_are_clear_errors() -> None:
    pipe = tiny_pipeline(modes=ISSUE_MODES)
    with pytest.raises(ConfigError, match="resize"):
        pipe(frontal=torch.zeros(1, 1, SIZE * 2, SIZE * 2), generate=["lateral"], progress=False)
    with pytest.raises(ConfigError, match="grayscale"):
        pipe(frontal=torch.zeros(1, 3, SIZE, SIZE), generate=["lateral"], progress=False)
    with pytest.raises(ConfigError, match="empty"):
        pipe(report=["  "], generate=["frontal"], progress=False)
    with pytest.raises(ConfigError, match="not trained"):
        pipe(lateral=images(1), generate=["report"], progress=False)  # lateral->report is not among the modes
    with pytest.raises(ConfigError, match="both given"):
        pipe(frontal=images(1), generate=["frontal"], progress=False)
    with pytest.raises(ConfigError, match="latent"):
        pipe.denoiser({"frontal": images(1), "lateral": images(1), "report": torch.zeros(1, 3, 8)},
                      {"frontal": 0, "lateral": 5, "report": 100})


def test_a_joint_model_serves_every_mode_by_default() -> None:
    modes = tiny_pipeline().modes
    assert set(ISSUE_MODES) < set(modes) and "->frontal+lateral+report" in modes and len(modes) == 19


def test_save_load_round_trip_gives_the_same_samples(tmp_path: Path) -> None:
    pipe = tiny_pipeline(seed=3)
    pipe.save_pretrained(tmp_path / "model")
    loaded = MultiViewPipeline.from_pretrained(tmp_path / "model")
    assert isinstance(load_denoiser(tmp_path / "model" / "denoiser"), JointUViT)
    assert loaded.modes == pipe.modes and loaded.report_codec.bank == REPORTS
    a = pipe(report=REPORTS[:1], generate="frontal,lateral", progress=False)
    b = loaded(report=REPORTS[:1], generate="frontal,lateral", progress=False)
    assert torch.equal(a.frontal, b.frontal) and torch.equal(a.lateral, b.lateral)


def test_outputs_record_given_and_generated(tmp_path: Path) -> None:
    out = tiny_pipeline()(frontal=images(1), generate=["lateral", "report"], progress=False)
    out.save(tmp_path, stem="case")
    lateral = Image.open(tmp_path / "case_0_lateral.png")
    assert lateral.text["cxrgen_role"] == "generated"
    assert Image.open(tmp_path / "case_0_frontal.png").text["cxrgen_role"] == "given"
    meta = json.loads((tmp_path / "case_0_report.json").read_text())
    assert meta["given"] == ["frontal"] and meta["generated"] == ["lateral", "report"] and meta["report_role"] == "generated"


def test_report_standin_keeps_sides_apart() -> None:
    codec = HashedReportCodec(tokens=4, token_dim=64).set_bank(REPORTS)
    z = codec.encode(["Small left pleural effusion.", "Small right pleural effusion."])
    assert z.shape == (2, 4, 64) and 0.5 < float(z.std()) < 2.0
    assert codec.decode(codec.encode(REPORTS)) == REPORTS
    assert torch.nn.functional.cosine_similarity(z[0].flatten(), z[1].flatten(), dim=0) < 0.95


def test_the_shipped_joint_config_loads_and_bad_shares_are_refused() -> None:
    from importlib.resources import files

    from cxrgen.config import load_config
    from cxrgen.config.multiview import MultiviewTrainConfig

    cfg = load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / "multiview-joint.yaml"))
    assert cfg.stage == "joint" and cfg.joint.denoiser == "joint-uvit-xs"
    with pytest.raises(ConfigError, match="summing below 1"):
        load_config(MultiviewTrainConfig, None, ["joint.given_prob=0.6", "joint.absent_prob=0.5"])
    with pytest.raises(ConfigError, match="unknown joint denoiser"):
        build_joint_denoiser("joint-uvit-huge")
