"""The SimCLR + labels evaluator trainer: NT-Xent, flip-free views, auxiliary targets, a tiny run, the narrow ResNet."""

from __future__ import annotations

import dataclasses
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_evaluator import CHIRAL, OTHER, SIZE, write_chiral_manifest

from cxrgen.cli import main
from cxrgen.config import (
    EvaluatorConfig,
    EvaluatorTrainConfig,
    ImageConfig,
    SSLEvaluatorTrainConfig,
    load_config,
    save_config,
)
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.resnet import build_resnet
from cxrgen.evaluate.train_ssl import (
    HELDOUT_NAME,
    aux_labels,
    lr_at,
    make_view,
    nt_xent,
    random_resized_crop,
    train_ssl_evaluator,
)


def tiny_cfg(manifest: Path, **kw) -> SSLEvaluatorTrainConfig:
    model = EvaluatorConfig(arch="resnet-tiny", class_names=(CHIRAL, OTHER), image=ImageConfig(size=SIZE))
    base = EvaluatorTrainConfig(model=model, manifests=(str(manifest),), epochs=15, batch_size=16, lr=3e-3,
                                device="cpu", progress=False, min_class_count=5)
    return SSLEvaluatorTrainConfig(**({"base": base, "view_size": SIZE, "min_crop_area": 0.8, "warmup_steps": 5,
                                       "supervised_weight": 2.0, "crop_rotation_deg": 5.0, "bn_recalibration_images": 64} | kw))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_chiral_manifest(tmp_path_factory.mktemp("chiral"), n_train=160, n_test=64)


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    return train_ssl_evaluator(tiny_cfg(manifest, image_cache=str(out.parent / "cache.pt")), out), out


def test_nt_xent_is_low_for_matching_views_and_chance_for_random_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    matched = nt_xent(torch.cat([a, a + 0.01 * torch.randn(16, 32, generator=g)]), temperature=0.1)
    random = nt_xent(torch.randn(32, 32, generator=g), temperature=0.1)
    assert matched < 0.5 < random
    assert abs(nt_xent(torch.ones(32, 4), temperature=1.0) - np.log(31)) < 1e-5  # all equal: uniform over 2B - 1


def test_views_never_flip_and_are_seeded():
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).expand(32, 1, 64, 64)  # brighter to the image's right
    cfg = tiny_cfg(Path("unused"), view_size=48, min_crop_area=0.35, crop_rotation_deg=10.0)
    views = random_resized_crop(ramp, cfg, torch.Generator().manual_seed(0))
    assert views.shape == (32, 1, 48, 48)
    left, right = views[..., :, :24].mean((1, 2, 3)), views[..., :, 24:].mean((1, 2, 3))
    assert (right > left).all()  # a mirror would put the dark side on the right
    again = make_view(ramp, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(again, make_view(ramp, cfg, torch.Generator().manual_seed(1)))
    assert again.min() >= -1 and again.max() <= 1


def test_lr_warms_up_then_follows_the_first_budget_to_run_out():
    cfg = tiny_cfg(Path("unused"), warmup_steps=10)
    lr = cfg.base.lr
    assert lr_at(0, 100, cfg) == pytest.approx(lr / 10) and lr_at(9, 100, cfg) == pytest.approx(lr)
    assert lr_at(55, 100, cfg) == pytest.approx(lr / 2)
    assert lr_at(20, 100, cfg, budget_used=1.0) == pytest.approx(0.0, abs=1e-12)


def test_aux_labels_mark_adult_sources_and_viral_pneumonia(tmp_path):
    rows = [{"source": "covid", "image_path": "a.png", "split": "train", "finding": "COVID-19"},
            {"source": "pediatric", "image_path": "b.png", "split": "train", "finding": "viral pneumonia"},
            {"source": "pediatric", "image_path": "c.png", "split": "train", "finding": "bacterial pneumonia"},
            {"source": "pediatric", "image_path": "d.png", "split": "train", "finding": "normal"},
            {"source": "pediatric", "image_path": "e.png", "split": "test", "finding": "normal"}]
    path = write_manifest(new_manifest(rows), tmp_path / "m.csv")
    got = aux_labels((str(path),), "train")
    assert got[:, 0].tolist() == [1, 0, 0, 0]
    assert got[1:3, 1].tolist() == [1, 0] and np.isnan(got[[0, 3], 1]).all()


def test_tiny_run_learns_the_chiral_label_and_saves_a_loadable_evaluator(trained):
    metrics, out = trained
    # the label needs left from right (no flips); a tiny net in 15 short epochs of the joint loss: 0.67-0.71
    assert metrics["test"]["per_class"][CHIRAL] > 0.6, metrics["test"]
    history = metrics["history"]
    assert len(history) == 15 and history[-1]["nt_xent"] < history[0]["nt_xent"]
    model = CXREvaluator.from_pretrained(out)
    x = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    assert model.features(x).shape == (3, model.feature_dim) and model.probabilities(x).shape == (3, 2)
    heldout = json.loads((out / HELDOUT_NAME).read_text())
    assert len(heldout["chiral"]["test"]) == 64 and heldout["chiral"]["test"][0].endswith(".png")
    assert (out.parent / "cache.pt").is_file()


def test_cpu_budget_stops_training_early(manifest, tmp_path):
    metrics = train_ssl_evaluator(tiny_cfg(manifest, max_cpu_seconds=1e-3), tmp_path)
    assert len(metrics["history"]) == 1 and metrics["history"][0]["steps"] == 1


def test_cli_train_evaluator_ssl(manifest, tmp_path, capsys):
    config = tmp_path / "ssl.yaml"
    save_config(tiny_cfg(manifest), config)
    assert main(["train-evaluator-ssl", str(config), "--set", "base.epochs=1", "--out", str(tmp_path / "o")]) == 0
    assert "per_class" in capsys.readouterr().out and (tmp_path / "o" / "model.safetensors").is_file()


def test_config_errors_and_shipped_config():
    with pytest.raises(ConfigError, match="temperature"):
        SSLEvaluatorTrainConfig(temperature=0)
    cfg = load_config(SSLEvaluatorTrainConfig, Path(str(files("cxrgen") / "configs" / "evaluator-ssl224.yaml")))
    assert cfg.base.model.arch == "resnet-narrow" and cfg.base.model.image.size == 224
    model = CXREvaluator(dataclasses.replace(cfg.base.model))
    assert model.feature_dim == 256 and 1e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_narrow_resnet_is_seeded_and_halves_five_times():
    a, b = build_resnet("resnet-narrow", generator=torch.Generator().manual_seed(0)), build_resnet("resnet-narrow")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    maps = a.blocks(a.stem(torch.zeros(1, 1, 224, 224)))
    assert maps.shape == (1, 256, 7, 7)
    with pytest.raises(ConfigError, match="resnet-narrow"):
        build_resnet("resnet-huge")


def test_view_noise_is_off_by_default_and_bounded_when_on():
    x = torch.zeros(8, 1, 32, 32)
    cfg = tiny_cfg(Path("unused"), min_crop_area=1.0, max_aspect=1.0, crop_rotation_deg=0.0)
    cfg = dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, intensity_jitter=0.0, gamma_jitter=0.0))
    assert torch.allclose(make_view(x, cfg, torch.Generator().manual_seed(0)), x, atol=1e-5)
    noisy = make_view(x, dataclasses.replace(cfg, view_noise_std=0.03), torch.Generator().manual_seed(0))
    assert 0 < float(noisy.std()) < 0.03
