"""CoDi XR's view prompts from the frozen aligned encoders (``view_prompt_encoder: aligned``; tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrgen.config import ScheduleConfig, load_config
from cxrgen.config.multiview import CodiStageConfig, MultiviewTrainConfig
from cxrgen.denoisers.codi import CodiXR, build_codi_denoiser
from cxrgen.errors import ConfigError
from cxrgen.multiview.aligned import AlignedEncoders
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import _aligned_prompts, _trainable, clip_groups, single_loss

SIZE, T, GRID = 32, 100, 2  # 32 px: the aligned tower's last feature map is 2 x 2


def aligned_encoders(seed: int = 11, size: int = SIZE, width: int = 4) -> AlignedEncoders:
    torch.manual_seed(seed)
    return AlignedEncoders(vocab_size=300, image_size=size, embed_dim=8, image_width=width, text_width=16,
                           text_depth=1, heads=2, max_length=16).eval()


def model(seed: int = 0, **kw) -> CodiXR:
    args = dict(in_channels=1, sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T,
                view_prompt_grid=GRID, view_prompt_encoder="aligned", view_prompt_width=4, view_prompt_embed_dim=8)
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(seed), **{**args, **kw})


def opened(m: CodiXR, seed: int = 3) -> CodiXR:
    """Random null tokens and projections, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.prompts.values():
            for q in (p.null, p.proj[1].weight):
                q.copy_(torch.randn(q.shape, generator=gen))
    return m


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(n: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    return {"frontal": images(n, seed), "lateral": images(n, seed + 1), "report": torch.randn(n, 2, 8)}


def towers_equal(m: CodiXR, enc: AlignedEncoders) -> bool:
    return all(torch.equal(a, b) for v in ("frontal", "lateral")
               for a, b in zip(m.prompts[v].tower.state_dict().values(), getattr(enc, v).state_dict().values(),
                               strict=True))


def test_off_by_default_older_models_and_configs_unchanged(tmp_path: Path) -> None:
    assert CodiStageConfig().view_prompt_encoder == "cnn" and CodiStageConfig().view_prompt_from is None
    cnn = build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(0), in_channels=1, sample_size=SIZE,
                              patch_size=4, report_tokens=2, report_dim=8, view_prompt_grid=GRID)
    assert cnn.config.view_prompt_encoder == "cnn" and not cnn.frozen_parameters()
    assert not any(".tower." in n for n, _ in cnn.named_parameters())
    # a model saved before the option (no view_prompt_* keys beyond the grid) loads as the CNN prompts it was
    cnn.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    new_keys = [k for k in config if k.startswith("view_prompt_") and k != "view_prompt_grid"]
    assert len(new_keys) == 6
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in new_keys}))
    old = CodiXR.from_pretrained(tmp_path / "old")
    lat, times = latents(), {"frontal": 0, "lateral": 5, "report": T}
    with torch.no_grad():
        assert torch.equal(old(lat, times, outputs=["lateral"], bridge=False)["lateral"],
                           cnn(lat, times, outputs=["lateral"], bridge=False)["lateral"])


def test_towers_are_the_aligned_ones_after_the_copy_and_a_save_load_round_trip(tmp_path: Path) -> None:
    m, enc = model(view_prompt_global=True), aligned_encoders()
    assert not towers_equal(m, enc)
    m.copy_aligned_towers(enc)
    assert towers_equal(m, enc)
    assert not torch.equal(m.prompts["frontal"].tower.head.weight, m.prompts["lateral"].tower.head.weight)
    m.save_pretrained(tmp_path / "codi")
    loaded = CodiXR.from_pretrained(tmp_path / "codi")  # rebuilt from the config alone: no aligned folder needed
    assert loaded.config.view_prompt_width == 4 and loaded.config.view_prompt_global
    assert towers_equal(loaded, enc)
    assert all(not p.requires_grad for p in loaded.frozen_parameters())
    # the tokens: g x g of the tower's last feature map + the global embedding
    assert m.trunks["lateral"].n_lead == model().trunks["lateral"].n_lead + 1
    assert m.prompts["frontal"](images(3), torch.tensor([True, False, True])).shape == (3, GRID * GRID + 1, 32)


def test_a_training_step_moves_the_projection_not_the_frozen_tower() -> None:
    m, enc = opened(model()), aligned_encoders()
    m.copy_aligned_towers(enc)
    cc = CodiStageConfig(denoiser="codi-tiny", view_prompt_grid=GRID, view_prompt_encoder="aligned",
                         view_prompt_from="unused", clip_per_trunk=True)
    m.requires_grad_(True)  # _trainable must freeze the towers again
    groups = _trainable(m, cc, "codi_single")
    frozen = {id(p) for p in m.frozen_parameters()}
    assert frozen and not frozen & {id(p) for g in groups for p in g["params"]}
    assert not frozen & {id(p) for g in clip_groups(m) for p in g}
    assert {id(p) for p in m.prompts["frontal"].proj.parameters()} <= {id(p) for g in clip_groups(m) for p in g}
    m.train()
    assert not m.prompts["frontal"].tower.training and m.prompts["frontal"].proj.training
    proj = m.prompts["frontal"].proj[1].weight.detach().clone()
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-2)
    clean = {"frontal": images(4), "lateral": images(4, 5), "report": torch.randn(4, 2, 8)}
    loss, _ = single_loss(m, sched, clean, 0.1, torch.Generator().manual_seed(0), view_given_prob=1.0)
    loss.backward()
    assert all(p.grad is None for p in m.frozen_parameters())  # no graph through the tower
    opt.step()
    assert towers_equal(m, enc)
    assert not torch.equal(m.prompts["frontal"].proj[1].weight, proj)


def test_the_given_frontal_reaches_the_lateral_trunk_through_pixels() -> None:
    m = opened(model())
    m.copy_aligned_towers(aligned_encoders())
    lat = latents()
    given = {"frontal": 0, "lateral": 5, "report": T}
    absent = {**given, "frontal": m.absent_time}
    with torch.no_grad():
        a = m(lat, given, outputs=["lateral"], bridge=False)["lateral"]
        b = m({**lat, "frontal": images(2, 7)}, given, outputs=["lateral"], bridge=False)["lateral"]
        c = m(lat, absent, outputs=["lateral"], bridge=False)["lateral"]
        d = m({**lat, "frontal": images(2, 7)}, absent, outputs=["lateral"], bridge=False)["lateral"]
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    assert torch.equal(c, d)  # absent: the null tokens, whatever the pixels
    # latents z = (pixels - shift) * scale: the tower reads the pixels back
    scaled = opened(model(view_prompt_scale=2.0, view_prompt_shift=0.5))
    scaled.load_state_dict(m.state_dict())
    z = {**lat, "frontal": (lat["frontal"] - 0.5) * 2.0}
    with torch.no_grad():
        e = scaled(z, given, outputs=["lateral"], bridge=False)["lateral"]
    torch.testing.assert_close(e, a)


def test_mismatches_are_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match="latent-space"):
        model(in_channels=4)
    with pytest.raises(ConfigError, match="feature map"):
        model(view_prompt_grid=3)
    with pytest.raises(ConfigError, match="view_prompt_grid > 0"):
        model(view_prompt_grid=0)
    with pytest.raises(ConfigError, match="view_prompt_encoder"):
        model(view_prompt_encoder="clip")
    with pytest.raises(ConfigError, match="image size"):
        model().copy_aligned_towers(aligned_encoders(size=2 * SIZE))
    with pytest.raises(ConfigError, match="image size"):
        model().copy_aligned_towers(aligned_encoders(width=8))
    with pytest.raises(ConfigError, match="not aligned towers"):
        build_codi_denoiser("codi-tiny", in_channels=1, sample_size=SIZE, patch_size=4,
                            view_prompt_grid=GRID).copy_aligned_towers(aligned_encoders())
    for bad in (["codi.view_prompt_encoder=aligned", "codi.view_prompt_grid=4"],
                ["codi.view_prompt_encoder=aligned", "codi.view_prompt_from=x"],
                ["codi.view_prompt_from=x", "codi.view_prompt_grid=4"],
                ["codi.view_prompt_encoder=clip"]):
        with pytest.raises(ConfigError, match="view_prompt"):
            load_config(MultiviewTrainConfig, None, bad)
    cc = CodiStageConfig(view_prompt_grid=4, view_prompt_encoder="aligned", view_prompt_from="x")
    with pytest.raises(ConfigError, match="autoencoder: identity"):
        _aligned_prompts(cc, object())  # a latent codec: checked before the folder is read


@pytest.mark.slow
def test_codi_single_with_aligned_prompts_end_to_end(tmp_path: Path) -> None:
    from multiview_fixture import write_synthetic_twin

    from cxrgen.cli import main
    from cxrgen.multiview.aligned import AlignedModel
    from cxrgen.pipelines import load_multiview_pipeline
    from cxrgen.text.scratch import train_tokenizer

    twin = write_synthetic_twin(tmp_path / "twin", n=12, size=SIZE)
    reports = ["Left pleural effusion. The heart is enlarged.", "No pleural effusion. Heart size is normal."] * 20
    tok = train_tokenizer(reports, 300, tmp_path / "tok", min_frequency=1)
    torch.manual_seed(4)
    enc = AlignedEncoders(vocab_size=len(tok), image_size=SIZE, embed_dim=8, image_width=4, text_width=16,
                          text_depth=1, heads=2, max_length=16)
    AlignedModel(enc, tok).save_pretrained(tmp_path / "aligned")
    overrides = [f"data.twin_dirs=[{twin}]", "data.image_size=32", "codi.denoiser=codi-tiny", "stage=codi_single",
                 "codi.model_image_size=32", "codi.report_codec=null", "codi.report_tokens=2", "codi.report_dim=8",
                 "codi.report_condition=latent", "codi.steps=2", "codi.batch_size=4", "codi.log_every=1",
                 f"codi.view_prompt_grid={GRID}", "codi.view_prompt_encoder=aligned", "codi.clip_per_trunk=true",
                 f"codi.view_prompt_from={tmp_path / 'aligned'}", "codi.view_prompt_global=true", "codi.lr=0.05"]
    config = str(Path(__file__).parents[1] / "src" / "cxrgen" / "configs" / "multiview-codi-pixel64.yaml")
    args = ["train-multiview", config, "--out", str(tmp_path / "run")] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "codi_metrics.json").read_text())
    pipe = load_multiview_pipeline(tmp_path / "run" / "model")
    tower = sum(p.numel() for p in pipe.denoiser.frozen_parameters())
    bridges = sum(p.numel() for p in pipe.denoiser.bridge_parameters())
    assert tower and metrics["trained_params"] == metrics["params"] - tower - bridges
    assert towers_equal(pipe.denoiser, AlignedModel.from_pretrained(tmp_path / "aligned").encoders)
    frontal = images(1)
    a = pipe(frontal=frontal, generate=["lateral"], num_inference_steps=2, progress=False).lateral
    b = pipe(frontal=images(1, 9), generate=["lateral"], num_inference_steps=2, progress=False).lateral
    assert a.shape == (1, 1, SIZE, SIZE) and not torch.allclose(a, b)
