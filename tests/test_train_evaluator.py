"""Training the cxrgen-evaluator: masked BCE, flip-free augmentation, data reading, a tiny run on chiral images."""

from __future__ import annotations

import json
import logging
import math
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrgen.config import (
    EvaluatorConfig,
    EvaluatorTrainConfig,
    ImageConfig,
    load_config,
)
from cxrgen.data.images import save_png
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.train_evaluator import (
    METRICS_NAME,
    TRAIN_CONFIG_NAME,
    augment,
    check_counts,
    class_counts,
    label_targets,
    masked_bce,
    random_affine,
    read_split,
    run_train_evaluator,
    train_evaluator,
)

SIZE = 32
NAN = float("nan")
CHIRAL, OTHER = "Pleural Effusion", "No Finding"  # CHIRAL: the blob sits left of the bar
BLOB_OFFSET, BAR_HALF_WIDTH, BLOB_SIGMA = 6, 1, 2.0  # pixels


def chiral_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n, 1, SIZE, SIZE) in [-1, 1]: a vertical bar with a blob beside it; label 1 when left of it.

    Mirroring an image swaps its label, so a network trained with flips could not learn it.
    """
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(n, generator=g) < 0.5
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    centre = (SIZE - 1) / 2  # the mirror axis: a flip maps x to 2 * centre - x
    bar_x = centre + torch.randint(-3, 4, (n,), generator=g).float()  # (n,), symmetric about the axis
    blob_x = bar_x + torch.where(left, -BLOB_OFFSET, BLOB_OFFSET)
    blob_y = 8 + 16 * torch.rand(n, generator=g)
    out = 0.15 * torch.rand((n, SIZE, SIZE), generator=g)
    out += ((xx - bar_x.view(n, 1, 1)).abs() <= BAR_HALF_WIDTH).float() * 0.8
    dist2 = (xx - blob_x.view(n, 1, 1)) ** 2 + (yy - blob_y.view(n, 1, 1)) ** 2
    out += 0.8 * torch.exp(-dist2 / (2 * BLOB_SIGMA**2))
    return (out.clamp(0, 1) * 2 - 1).unsqueeze(1), left.numpy().astype(np.float64)  # (n, 1, H, W), (n,)


def write_chiral_manifest(folder: Path, n_train: int, n_test: int) -> Path:
    """PNGs + manifest: CHIRAL from the image; OTHER is 1 - CHIRAL but NaN or -1 on some rows."""
    images, labels = chiral_images(n_train + n_test, seed=0)
    cfg = ImageConfig(size=SIZE)
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        other = [1.0 - lab, NAN, -1.0, 1.0 - lab][i % 4]
        path = save_png(img, folder / "img" / f"{i:03d}.png", cfg)
        rows.append({"source": "chiral", "image_path": str(path.relative_to(folder)), "patient_id": str(i),
                     "split": "train" if i < n_train else "test", CHIRAL: lab, OTHER: other})
    return write_manifest(new_manifest(rows), folder / "manifest.csv")


def tiny_train_cfg(manifest: Path, **kw) -> EvaluatorTrainConfig:
    model = EvaluatorConfig(arch="densenet-tiny", class_names=(CHIRAL, OTHER), image=ImageConfig(size=SIZE),
                            growth_rate=8, block_config=(2, 2), num_init_features=16)
    base = {"model": model, "manifests": (str(manifest),), "epochs": 12, "batch_size": 16, "lr": 3e-3,
            "device": "cpu", "validate_split": "validate", "progress": False, "min_class_count": 5}
    return EvaluatorTrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_chiral_manifest(tmp_path_factory.mktemp("chiral"), n_train=160, n_test=64)


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    return train_evaluator(tiny_train_cfg(manifest), out), out


# ------------------------------------------------------------------------------------------
# Masked BCE
# ------------------------------------------------------------------------------------------
def test_masked_bce_ignores_nan_and_uncertain_labels():
    labels = torch.tensor([[1.0, NAN], [-1.0, 0.0], [0.0, 1.0]])
    targets, mask = label_targets(labels)
    assert mask.tolist() == [[True, False], [False, True], [True, True]]
    logits = torch.tensor([[0.3, 5.0], [-2.0, 0.1], [0.7, -0.4]], requires_grad=True)
    loss = masked_bce(logits, targets, mask)
    certain = torch.tensor([0.3, 0.1, 0.7, -0.4]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(*certain)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] != 0


def test_uncertain_policies_map_minus_one():
    labels = torch.tensor([[-1.0, NAN]])
    for policy, value in (("ones", 1.0), ("zeros", 0.0)):
        targets, mask = label_targets(labels, policy)
        assert mask.tolist() == [[True, False]] and targets[0, 0] == value
    with pytest.raises(ConfigError, match="ignore"):
        label_targets(labels, "half")


def test_masked_bce_with_nothing_certain_is_zero():
    _, mask = label_targets(torch.full((2, 3), NAN))
    assert masked_bce(torch.randn(2, 3), torch.zeros(2, 3), mask).item() == 0.0


# ------------------------------------------------------------------------------------------
# Augmentation: small, seeded, never a flip
# ------------------------------------------------------------------------------------------
def _centroid_x(images: torch.Tensor) -> torch.Tensor:
    weight = (images > 0).float().squeeze(1)  # (B, H, W): the bright patch only
    xs = torch.arange(images.shape[-1]).float()
    return (weight.sum(1) * xs).sum(1) / weight.sum((1, 2))  # (B,)


def test_augmentation_keeps_left_on_the_left():
    x = -torch.ones(64, 1, SIZE, SIZE)
    x[..., 12:20, 4:10] = 1.0  # a bright patch on the image's left
    cfg = EvaluatorTrainConfig()
    out = augment(x, cfg, ImageConfig(size=SIZE), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert (_centroid_x(out) < SIZE / 2 - 4).all()  # a flip would put it near x = 25
    assert not torch.equal(out, x)


def test_augmentation_is_seeded_and_zero_settings_are_identity():
    x = chiral_images(4, seed=1)[0]
    cfg, image = EvaluatorTrainConfig(), ImageConfig(size=SIZE)
    a = augment(x, cfg, image, torch.Generator().manual_seed(3))
    b = augment(x, cfg, image, torch.Generator().manual_seed(3))
    c = augment(x, cfg, image, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    still = EvaluatorTrainConfig(max_rotation_deg=0, max_scale=0, max_translate=0, intensity_jitter=0,
                                 gamma_jitter=0)
    assert torch.allclose(augment(x, still, image, torch.Generator().manual_seed(3)), x, atol=1e-5)


def test_affine_pads_with_black():
    x = torch.ones(8, 1, SIZE, SIZE)
    cfg = EvaluatorTrainConfig(max_rotation_deg=20, max_translate=0.2)
    out = random_affine(x, cfg, ImageConfig(size=SIZE), torch.Generator().manual_seed(0))
    assert out.min() >= -1 - 1e-6 and math.isclose(out.min().item(), -1.0, abs_tol=1e-5)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def test_read_split_resolves_paths_and_keeps_nan(manifest):
    split = read_split([manifest], "train", (CHIRAL, OTHER))
    assert len(split) == 160 and Path(split.paths[0]).is_file()
    assert split.labels.shape == (160, 2) and np.isnan(split.labels[:, 1]).sum() == 40
    assert set(split.sources) == {"chiral"}
    with pytest.raises(MissingColumnsError, match="Unknown Finding"):
        read_split([manifest], "train", ("Edema", "Unknown Finding"))


def test_class_counts_and_warning(caplog):
    labels = np.array([[1.0, NAN], [0.0, -1.0], [1.0, 1.0]])
    counts = class_counts(labels, ("a", "b"))
    assert counts["a"] == {"positive": 2, "negative": 1, "uncertain": 0, "missing": 0}
    assert counts["b"] == {"positive": 1, "negative": 0, "uncertain": 1, "missing": 1}
    with caplog.at_level(logging.WARNING):
        check_counts(counts, minimum=1)
    assert "'b'" in caplog.text and "'a'" not in caplog.text


# ------------------------------------------------------------------------------------------
# A tiny run on chiral images
# ------------------------------------------------------------------------------------------
def test_tiny_run_learns_the_chiral_label(trained):
    metrics, _ = trained
    assert metrics["test"]["per_class"][CHIRAL] > 0.9  # a flip augmentation would leave this near 0.5
    assert sum(metrics["test"]["counts"][CHIRAL].values()) == 64  # every test image has a certain label
    assert metrics["train_counts"][OTHER]["missing"] == 40 and metrics["train_counts"][OTHER]["uncertain"] == 40
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert "validate" not in metrics and set(metrics["test_by_source"]) == {"chiral"}


def test_tiny_run_saves_a_loadable_evaluator(trained):
    metrics, out = trained
    assert json.loads((out / METRICS_NAME).read_text())["test"] == metrics["test"]
    assert (out / TRAIN_CONFIG_NAME).is_file()
    model = CXREvaluator.from_pretrained(out)
    x, labels = chiral_images(16, seed=9)
    probs = model.probabilities(x)[:, 0].numpy()
    assert probs[labels == 1].mean() > probs[labels == 0].mean()
    assert model.features(x).shape == (16, metrics["feature_dim"])


def test_run_from_yaml_with_overrides(manifest, tmp_path):
    cfg_path = tmp_path / "ev.yaml"
    from cxrgen.config import save_config

    save_config(tiny_train_cfg(manifest), cfg_path)
    metrics = run_train_evaluator(cfg_path, ["epochs=1", "max_train_images=32"], tmp_path / "out")
    assert metrics["epochs"] == 1 and metrics["train_images"] == 32
    assert (tmp_path / "out" / METRICS_NAME).is_file()


def test_cli_train_evaluator(manifest, tmp_path, capsys):
    from cxrgen.cli import main
    from cxrgen.config import save_config

    cfg_path = save_config(tiny_train_cfg(manifest), tmp_path / "ev.yaml")
    code = main(["train-evaluator", str(cfg_path), "--set", "epochs=1", "--set", "max_train_images=32",
                 "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / METRICS_NAME).is_file()
    assert "per_class" in capsys.readouterr().out


def test_run_errors(manifest, tmp_path):
    with pytest.raises(ConfigError, match="manifests"):
        train_evaluator(EvaluatorTrainConfig(), tmp_path)
    with pytest.raises(DataError, match="'training'"):
        train_evaluator(tiny_train_cfg(manifest, train_split="training"), tmp_path)
    with pytest.raises(ConfigError, match="no field 'model.depth'"):
        run_train_evaluator(None, ["model.depth=3"], tmp_path)


def test_shipped_config_loads_and_builds():
    path = files("cxrgen") / "configs" / "evaluator-small.yaml"
    cfg = load_config(EvaluatorTrainConfig, Path(str(path)))
    assert cfg.uncertain == "ignore" and len(cfg.model.class_names) >= 2
    model = CXREvaluator(cfg.model)
    assert model.feature_dim > 0 and model.class_names == cfg.model.class_names
