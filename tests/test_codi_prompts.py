"""CoDi XR's view prompt encoders (``view_prompt_grid``): a given view as tokens in the other trunks' sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_codi import REPORTS, SIZE, T, images, latents, tiny_model, tiny_pipeline

from cxrgen.config import ScheduleConfig, load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.denoisers.codi import CodiXR, build_codi_denoiser
from cxrgen.errors import ConfigError
from cxrgen.pipelines import ISSUE_MODES, load_multiview_pipeline
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import single_loss

GRID = 2


def prompted_model(seed: int = 0) -> CodiXR:
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(seed), in_channels=1,
                               sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T,
                               view_prompt_grid=GRID)


def opened(model: CodiXR, seed: int = 3) -> CodiXR:
    """Random null tokens, as after training (they start at zero, like the positions' init would not)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompts.values():
            p.null.copy_(torch.randn(p.null.shape, generator=gen))
    return model


def test_shapes_and_which_trunk_reads_which_view() -> None:
    model = prompted_model()
    assert model.prompted_by == {"frontal": ("lateral",), "lateral": ("frontal",), "report": ("frontal", "lateral")}
    k = GRID * GRID
    assert model.trunks["lateral"].n_lead == tiny_model().trunks["lateral"].n_lead + k
    assert model.trunks["report"].n_lead == tiny_model().trunks["report"].n_lead + 2 * k
    times = {"frontal": 0, "lateral": 5, "report": T}
    out = model(latents(3), times, outputs=["lateral", "report"], bridge=False)
    assert out["lateral"].shape == (3, 1, SIZE, SIZE) and out["report"].shape == (3, 2, 8)
    assert model.prompts["frontal"](images(3), torch.tensor([True, False, True])).shape == (3, k, 32)
    # off by default: the old models' parameters are unchanged
    assert not any(n.startswith("prompts.") for n, _ in tiny_model().named_parameters())
    assert tiny_model().config.view_prompt_grid == 0


def test_an_absent_view_is_its_null_tokens_and_a_given_one_is_read() -> None:
    model = opened(prompted_model())
    lat = latents(2)
    absent = {"frontal": model.absent_time, "lateral": 5, "report": T}
    other = {**lat, "frontal": images(2, 7)}
    with torch.no_grad():
        a = model(lat, absent, outputs=["lateral"], bridge=False)["lateral"]
        b = model(other, absent, outputs=["lateral"], bridge=False)["lateral"]  # the absent frontal's pixels don't count
        given = {**absent, "frontal": 0}
        c = model(lat, given, outputs=["lateral"], bridge=False)["lateral"]
        d = model(other, given, outputs=["lateral"], bridge=False)["lateral"]
        noised = model(lat, {**absent, "frontal": 7}, outputs=["lateral"], bridge=False)["lateral"]
    assert torch.equal(a, b) and torch.equal(a, noised)  # noised = not given: null tokens
    assert not torch.allclose(a, c) and not torch.allclose(c, d)
    # per sample: one given, one absent in the same batch
    mixed = torch.tensor([0, model.absent_time])
    with torch.no_grad():
        e = model(lat, {**absent, "frontal": mixed}, outputs=["lateral"], bridge=False)["lateral"]
    assert torch.allclose(e[0], c[0], atol=1e-6) and torch.allclose(e[1], a[1], atol=1e-6)


def test_the_prompted_single_loss_trains_the_prompt_encoders_not_the_bridges() -> None:
    model = prompted_model()
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    clean = {"frontal": images(8), "lateral": -images(8), "report": torch.randn(8, 2, 8)}
    loss, per = single_loss(model, sched, clean, 0.1, torch.Generator().manual_seed(0), view_given_prob=1.0)
    loss.backward()
    assert set(per) == {"frontal", "lateral", "report"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompts["frontal"].net.parameters())
    assert all(p.grad is None for p in model.bridge_parameters())
    model.zero_grad(set_to_none=True)
    single_loss(model, sched, clean, 0.1, torch.Generator().manual_seed(0), view_given_prob=0.0)[0].backward()
    assert all(p.grad is None for p in model.prompts["frontal"].net.parameters())  # never given: never encoded
    assert model.prompts["frontal"].null.grad.abs().sum() > 0


def test_a_per_trunk_share_gives_the_lateral_to_the_frontal_trunk_alone_less_often() -> None:
    model = prompted_model()
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    clean = {"frontal": images(64), "lateral": -images(64), "report": torch.randn(64, 2, 8)}
    given: dict[str, list[float]] = {"frontal": [], "lateral": []}  # per prompt encoder: share of samples given
    hooks = [model.prompts[v].register_forward_hook(lambda mod, args, out, v=v: given[v].append(float(args[1].float()
                                                                                                    .mean())))
             for v in ("frontal", "lateral")]
    cfg = load_config(MultiviewTrainConfig, None, ["codi.view_prompt_grid=2", "codi.frontal_view_given_prob=0.0"])
    assert cfg.codi.view_given_probs() == {"frontal": 0.0, "lateral": 0.5, "report": 0.5}
    with torch.no_grad():
        single_loss(model, sched, clean, 0.1, torch.Generator().manual_seed(0), cfg.codi.view_given_probs())
    # the lateral prompt is read by the frontal trunk (never given now) and the report trunk (half the samples)
    assert given["lateral"][0] == 0.0 and 0.2 < given["lateral"][1] < 0.8
    assert all(0.2 < g < 0.8 for g in given["frontal"])  # the frontal prompt: lateral and report trunks, as before
    for h in hooks:
        h.remove()
    default = load_config(MultiviewTrainConfig, None, []).codi
    assert default.frontal_view_given_prob is None and set(default.view_given_probs().values()) == {0.5}
    with pytest.raises(ConfigError, match="frontal_view_given_prob"):
        load_config(MultiviewTrainConfig, None, ["codi.frontal_view_given_prob=2"])


def test_the_pipeline_passes_given_views_to_the_prompt_encoders(tmp_path: Path) -> None:
    model = opened(prompted_model())
    pipe = tiny_pipeline(model)  # a stage-one model with view prompts serves every mode
    calls: list[torch.Tensor] = []
    hook = model.prompts["frontal"].register_forward_hook(lambda mod, args, out: calls.append(args[1].clone()))
    out = pipe(frontal=images(2), generate=["lateral"], progress=False)
    assert out.lateral.shape == (2, 1, SIZE, SIZE) and calls
    # the call and its guidance variant (frontal dropped): given in the first half, null in the second
    assert calls[0].tolist() == [True, True, False, False]
    calls.clear()
    rep = pipe(frontal=images(2), generate=["report"], progress=False).report
    assert all(r in REPORTS for r in rep) and calls and calls[0][:2].all()
    a = pipe(frontal=images(1), generate=["lateral"], progress=False).lateral
    b = pipe(frontal=images(1, 9), generate=["lateral"], progress=False).lateral
    assert not torch.allclose(a, b)  # the generated lateral depends on the given frontal
    hook.remove()
    pipe.save_pretrained(tmp_path / "m")
    loaded = load_multiview_pipeline(tmp_path / "m")
    assert loaded.denoiser.config.view_prompt_grid == GRID
    assert torch.equal(loaded(frontal=images(1), generate=["lateral"], progress=False).lateral, a)
    assert set(ISSUE_MODES) <= set(pipe.modes)


def test_config_validation() -> None:
    cfg = load_config(MultiviewTrainConfig, None, ["codi.view_prompt_grid=4", "codi.view_given_prob=0.3"])
    assert (cfg.codi.view_prompt_grid, cfg.codi.view_given_prob) == (4, 0.3)
    assert load_config(MultiviewTrainConfig, None, []).codi.view_prompt_grid == 0
    with pytest.raises(ConfigError, match="view_prompt_grid"):
        load_config(MultiviewTrainConfig, None, ["codi.view_prompt_grid=-1"])
    with pytest.raises(ConfigError, match="view_given_prob"):
        load_config(MultiviewTrainConfig, None, ["codi.view_given_prob=1.5"])
    with pytest.raises(ConfigError, match="view_prompt_grid"):
        build_codi_denoiser("codi-tiny", sample_size=SIZE, patch_size=4, view_prompt_grid=SIZE + 1)


def test_view_prompts_are_attended_beside_a_masked_report() -> None:
    from cxrgen.denoisers.codi import CONTEXT

    model = opened(build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1,
                                       sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8,
                                       num_train_timesteps=T, view_prompt_grid=GRID, context_dim=6, context_tokens=3,
                                       context_mask=True))
    trunk, k = model.trunks["lateral"], GRID * GRID
    assert trunk.n_ctx == 3 and trunk.n_lead == 1 + 3 + k
    context = torch.randn(2, 3, 6)
    context[:, 2] = 0  # the third sentence slot is padding
    n_tokens = trunk.n_lead + (SIZE // 4) ** 2
    keep = trunk.attention_mask(context, torch.tensor([True, False]), n_tokens, 2)[:, 0, 0]  # (B, n_tokens)
    assert keep[0, :4].tolist() == [True, True, True, False]  # time, two real sentences, padding masked
    assert keep[1, :4].tolist() == [True, True, False, False]  # no report: the null report's first token only
    assert keep[:, 4:].all()  # the view prompts and the own tokens are always attended
    lat = {**latents(2), CONTEXT: context}
    times = {"frontal": 0, "lateral": 5, "report": 0}
    with torch.no_grad():
        a = model(lat, times, outputs=["lateral"], bridge=False)["lateral"]
        b = model({**lat, "frontal": images(2, 7)}, times, outputs=["lateral"], bridge=False)["lateral"]
    assert not torch.allclose(a, b)  # the given frontal is read through its prompt tokens
