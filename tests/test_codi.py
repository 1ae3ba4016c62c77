"""CoDi XR's three-model arm: bridged per-modality denoisers, their two losses, the sibling pipeline (tiny parts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrgen.autoencoder import IdentityCodec
from cxrgen.config import AutoencoderConfig, SamplingConfig, ScheduleConfig
from cxrgen.denoisers.codi import CodiXR, build_codi_denoiser
from cxrgen.denoisers.registry import load_denoiser
from cxrgen.errors import ConfigError
from cxrgen.pipelines import ISSUE_MODES, CodiPipeline, Mode, MultiViewPipeline, load_multiview_pipeline
from cxrgen.pipelines.codi import SINGLE_MODES
from cxrgen.samplers import training_scheduler
from cxrgen.text.report_standin import HashedReportCodec
from cxrgen.train.codi import single_loss
from cxrgen.train.joint_loss import joint_loss

SIZE = 16
REPORTS = ["Small left pleural effusion.", "No pleural effusion. Normal heart size.", "Right lower lobe consolidation."]
T = 100


def tiny_model(seed: int = 0) -> CodiXR:
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(seed), in_channels=1,
                               sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T)


def opened_bridges(model: CodiXR, seed: int = 1) -> CodiXR:
    """Give the zero-initialised bridge outputs random weights, as after stage 2."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bridge in model.bridges.values():
            bridge.gate.weight.copy_(torch.randn(bridge.gate.weight.shape, generator=gen) * 0.2)
    return model


def tiny_pipeline(model: CodiXR | None = None, modes: tuple[str, ...] | None = None) -> CodiPipeline:
    codec = IdentityCodec(AutoencoderConfig(kind="identity"))
    report = HashedReportCodec(tokens=2, token_dim=8, buckets=64).set_bank(REPORTS)
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    return CodiPipeline(model or opened_bridges(tiny_model()), codec, report, sched, image_size=SIZE, modes=modes,
                        sampling=SamplingConfig(sampler="ddim", steps=3, guidance_scale=2.0))


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(n: int = 2) -> dict[str, torch.Tensor]:
    return {"frontal": images(n), "lateral": images(n, 2), "report": torch.randn(n, 2, 8)}


def test_fresh_bridges_are_the_identity_and_only_asked_trunks_run() -> None:
    model = tiny_model()
    lat, times = latents(), {"frontal": 0, "lateral": 40, "report": 0}
    bridged, alone = model(lat, times), model(lat, times, bridge=False)
    assert all(torch.equal(bridged[m], alone[m]) for m in ("frontal", "lateral", "report"))
    assert set(model(lat, times, outputs=["lateral"])) == {"lateral"}
    n_bridge = sum(p.numel() for p in model.bridge_parameters())
    assert 0 < n_bridge < sum(p.numel() for p in model.parameters())


def test_bridges_carry_given_modalities_and_ignore_absent_ones() -> None:
    model = opened_bridges(tiny_model())
    lat = latents()
    other = {**lat, "frontal": -lat["frontal"]}
    given = {"frontal": 0, "lateral": 40, "report": T}
    assert not torch.allclose(model(lat, given)["lateral"], model(other, given)["lateral"]), "frontal is read"
    absent = {**given, "frontal": T}
    assert torch.allclose(model(lat, absent)["lateral"], model(other, absent)["lateral"]), "absent is masked"
    assert torch.isfinite(model(lat, {"frontal": T, "lateral": 40, "report": T})["lateral"]).all()
    # the report reaches the image denoisers directly (stage 1), given at t = 0 only
    rep = {**lat, "report": -lat["report"]}
    with_report = {"frontal": 40, "lateral": T, "report": 0}
    assert not torch.allclose(model(lat, with_report, bridge=False)["frontal"],
                              model(rep, with_report, bridge=False)["frontal"])
    no_report = {"frontal": 40, "lateral": T, "report": T}
    assert torch.equal(model(lat, no_report, bridge=False)["frontal"], model(rep, no_report, bridge=False)["frontal"])


def test_stage_losses_train_their_parts() -> None:
    model = tiny_model()
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    clean = {"frontal": images(8), "lateral": -images(8), "report": torch.randn(8, 2, 8)}

    def held_out() -> float:
        with torch.no_grad():
            return float(sum(single_loss(model, sched, clean, 0.1, torch.Generator().manual_seed(k))[0]
                             for k in range(3)))

    before = held_out()
    opt = torch.optim.AdamW(model.trunk_parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    bridges = [p.clone() for p in model.bridge_parameters()]
    for _ in range(40):
        loss, per = single_loss(model, sched, clean, 0.1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.9 * before and set(per) == {"frontal", "lateral", "report"}
    assert all(torch.equal(a, b) for a, b in zip(bridges, model.bridge_parameters(), strict=True))
    # stage 2: the frozen denoisers' gradients stay empty, the bridges' do not
    opt.zero_grad(set_to_none=True)
    for p in model.trunk_parameters():
        p.requires_grad_(False)
    loss, _ = joint_loss(model, sched, clean, 0.25, 0.15, torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is None for p in model.trunk_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bridge_parameters())


@pytest.mark.parametrize("mode", ISSUE_MODES)
def test_every_mode_runs_with_the_bridged_models(mode: str) -> None:
    pipe = tiny_pipeline()
    m = Mode.parse(mode)
    given = {"frontal": images(2), "lateral": images(2, 2), "report": REPORTS[:2]}
    out = pipe(**{k: given[k] for k in m.given}, generate=m.generated, progress=False)
    assert out.generated == m.generated and out.given == m.given
    for view in m.generated:
        if view != "report":
            assert getattr(out, view).shape == (2, 1, SIZE, SIZE) and torch.isfinite(getattr(out, view)).all()
    if "report" in m.generated:
        assert all(r in REPORTS for r in out.report)


def test_a_stage_one_model_refuses_modes_that_need_bridges() -> None:
    pipe = tiny_pipeline(tiny_model(), modes=SINGLE_MODES)
    assert pipe(report=REPORTS[:1], generate="frontal,lateral", progress=False).frontal.shape == (1, 1, SIZE, SIZE)
    with pytest.raises(ConfigError, match="not trained"):
        pipe(frontal=images(1), generate=["lateral"], progress=False)


def test_save_load_round_trip_and_the_loader_picks_the_arm(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "codi")
    loaded = load_multiview_pipeline(tmp_path / "codi")
    assert type(loaded) is CodiPipeline and isinstance(load_denoiser(tmp_path / "codi" / "denoiser"), CodiXR)
    a = pipe(frontal=images(1), generate="lateral,report", progress=False)
    b = loaded(frontal=images(1), generate="lateral,report", progress=False)
    assert torch.equal(a.lateral, b.lateral) and a.report == b.report
    from test_joint_uvit import tiny_pipeline as joint_pipeline

    joint_pipeline().save_pretrained(tmp_path / "joint")
    assert type(load_multiview_pipeline(tmp_path / "joint")) is MultiViewPipeline
    with pytest.raises(ConfigError, match="model_index"):
        load_multiview_pipeline(tmp_path)


def test_packaged_configs_and_bad_settings() -> None:
    from importlib.resources import files

    from cxrgen.config import load_config
    from cxrgen.config.multiview import MultiviewTrainConfig

    single, bridge = (load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / f"multiview-codi-{s}.yaml"))
                      for s in ("single", "bridge"))
    assert (single.stage, single.codi.denoiser, bridge.stage) == ("codi_single", "codi-xs", "codi_bridge")
    assert bridge.codi.init_from and bridge.codi.trunk_lr_scale == 0
    with pytest.raises(ConfigError, match="cond_drop_prob"):
        load_config(MultiviewTrainConfig, None, ["codi.cond_drop_prob=1.5"])
    with pytest.raises(ConfigError, match="unknown CoDi denoiser"):
        build_codi_denoiser("codi-huge")
    with pytest.raises(ConfigError, match="env_patch"):
        build_codi_denoiser("codi-tiny", sample_size=6, patch_size=2)


def test_sincos_positions_are_fixed_and_survive_save_load(tmp_path: Path) -> None:
    model = build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1,
                                sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T,
                                pos_embed_type="sincos")
    trunk, learned = model.trunks["frontal"], tiny_model().trunks["frontal"]
    grid = (SIZE // 4) ** 2
    assert trunk.patch_pos.shape == (1, grid, 32) and learned.patch_pos is None
    assert trunk.pos_embed.shape[1] == learned.pos_embed.shape[1] - grid  # only time + report tokens learned
    assert model.trunks["report"].patch_pos is None  # the report's tokens have no 2-D grid
    assert "trunks.frontal.patch_pos" not in model.state_dict()  # recomputed, not saved
    model.save_pretrained(tmp_path)
    loaded = CodiXR.from_pretrained(tmp_path)
    lat, times = latents(), {m: torch.full((2,), 10) for m in ("frontal", "lateral", "report")}
    with torch.no_grad():
        assert all(torch.equal(model(lat, times)[m], loaded(lat, times)[m]) for m in lat)
    with pytest.raises(ConfigError, match="pos_embed_type"):
        build_codi_denoiser("codi-tiny", pos_embed_type="rope")
