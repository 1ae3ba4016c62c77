"""The augmentation study's CT-twin task (src/cxrgen/configs/augment-twin.yaml): PA rows only, the twin's own
patient-level splits, and presence labels that follow the twin's truth columns; flags override the file;
and the label fidelity of synthetic images (a real-trained classifier reading their prompts' findings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cxrgen
import cxrgen.evaluate.augment.train as augment_train
from cxrgen.cli import build_parser
from cxrgen.config import TrainConfig
from cxrgen.config.augment import ARMS, COMBINED, PRETRAIN, REAL, SYNTHETIC, AugmentStudyConfig, augment_study_config
from cxrgen.config.base import load_config
from cxrgen.data.prepare import prepare
from cxrgen.errors import ConfigError
from cxrgen.evaluate.augment.data import read_task
from cxrgen.evaluate.augment.study import label_fidelity
from cxrgen.evaluate.augment.train import Images, train_arm

TWIN_CONFIG = Path(cxrgen.__file__).parent / "configs" / "augment-twin.yaml"
# (split, effusion_side, pneumothorax_side, consolidation_lobe, cardiomegaly, nodule_lobe) per case
CASES = [("train", "right", "left", "none", "False", "none"), ("train", "none", "none", "left lower", "True", "none"),
         ("train", "bilateral", "none", "none", "False", "right upper"), ("train", "none", "right", "none", "True", "none"),
         ("train", "none", "none", "none", "False", "none"), ("validate", "left", "none", "none", "True", "none"),
         ("test", "left", "none", "right middle", "False", "none"), ("test", "none", "left", "none", "True", "none"),
         ("test", "none", "none", "none", "False", "left upper"), ("test", "right", "right", "left upper", "True", "none")]


def _twin_folder(root: Path) -> Path:
    """A hand-written twin.csv (as `cxrgen twin` writes it) with tiny random PA and lateral PNGs."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (split, eff, ptx, cons, cardio, nodule) in enumerate(CASES):
        sid = f"twin_0_{i:06d}"
        for view in ("pa", "lateral"):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / f"images/{sid}_{view}.png")
        rows.append({"study_id": sid, "patient_id": sid, "split": split, "findings": f"Case {i}.",
                     "impression": f"Impression {i}.", "pa_path": f"images/{sid}_pa.png",
                     "lateral_path": f"images/{sid}_lateral.png", "effusion_side": eff, "pneumothorax_side": ptx,
                     "consolidation_lobe": cons, "cardiomegaly": cardio, "nodule_lobe": nodule})
    pd.DataFrame(rows).to_csv(root / "twin.csv", index=False)
    return root


def test_twin_task_reads_pa_rows_splits_and_truth_labels(tmp_path: Path) -> None:
    prepare("twin", _twin_folder(tmp_path / "twin"), tmp_path / "prepared")  # both views, as `cxrgen prepare twin`
    cfg = augment_study_config(str(TWIN_CONFIG), manifest=str(tmp_path / "prepared/manifest.parquet"),
                               out_dir=str(tmp_path / "out"))
    task = read_task(cfg)
    assert not task.multiclass and task.classes == ("Pleural Effusion", "Pneumothorax", "Consolidation", "Cardiomegaly")
    truth = pd.DataFrame(CASES, columns=["split", "effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule"])
    expected = np.stack([truth["effusion"] != "none", truth["pneumothorax"] != "none",
                         truth["consolidation"] != "none", truth["cardiomegaly"] == "True"], axis=1).astype(np.float32)
    for rows, targets, split in ((task.train, task.train_targets, "train"), (task.test, task.test_targets, "test")):
        assert (rows["view"] == "PA").all() and rows["path"].str.endswith("_pa.png").all()  # never a lateral
        index = rows["study_id"].str[-6:].astype(int).to_numpy()
        assert list(index) == list(np.flatnonzero(truth["split"] == split))  # the twin's own split, validate unused
        np.testing.assert_array_equal(targets, expected[index])
    assert not set(task.train["patient_id"]) & set(task.test["patient_id"])


def test_twin_config_takes_command_line_overrides(tmp_path: Path) -> None:
    args = build_parser().parse_args(["augment-study", "--config", str(TWIN_CONFIG), "--n-real", "40",
                                      "--set", "epochs=3", "--label-columns", "Pleural Effusion,Cardiomegaly"])
    cfg = augment_study_config(args.config, args.set, n_real=args.n_real, label_columns=args.label_columns,
                               seeds=args.seeds)
    assert (cfg.n_real, cfg.epochs, cfg.seeds, cfg.view) == (40, 3, (0, 1, 2), "PA")
    assert cfg.label_columns == ("Pleural Effusion", "Cardiomegaly") and cfg.label_column is None
    with pytest.raises(ConfigError, match="manifest"):
        augment_study_config(None)


def test_label_fidelity_ranks_images_that_follow_their_labels_above_shuffled_ones() -> None:
    """The real-only classifier's AUROC on synthetic images: high when an image shows its label, ~0.5 when not."""
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(96, 2, generator=g) > 0.5).float()
    images = torch.rand(96, 1, 32, 32, generator=g) * 0.4 - 0.2
    images[:, :, :, :16] += targets[:, 0, None, None, None] * 0.8  # finding 0: bright image left half
    images[:, :, :16, :] -= targets[:, 1, None, None, None] * 0.8  # finding 1: dark upper half
    real, good = Images(images[:48], targets[:48]), Images(images[48:], targets[48:])
    bad = Images(good.images, good.targets[torch.randperm(48, generator=g)])
    cfg = AugmentStudyConfig(manifest="x", label_column=None, label_columns=("a", "b"), image_size=32, epochs=8,
                             batch_size=16, progress=False)
    net = train_arm(REAL, real, Images(torch.zeros(0, 1, 32, 32), torch.zeros(0, 2)), cfg, False, 0)
    faithful, shuffled = label_fidelity(net, good, False), label_fidelity(net, bad, False)
    assert faithful.min() > 0.8 and shuffled.max() < faithful.min() - 0.2


@pytest.mark.parametrize("matched", [False, True])
def test_matched_steps_gives_every_arm_as_many_steps(monkeypatch, matched: bool) -> None:
    """With matched_steps the real-only and synthetic-only arms see as many images (to half a pass) as the
    arms on real + synthetic images; without it every arm makes ``epochs`` passes over its own set."""
    seen: list[int] = []

    def count(net, data, epochs, *args, **kw):
        seen.append(epochs * len(data))
        return net

    monkeypatch.setattr(augment_train, "fit", count)
    cfg = AugmentStudyConfig(manifest="x", label_column=None, label_columns=("a", "b"), image_size=32, epochs=4,
                             matched_steps=matched, progress=False)
    own = {REAL: 30, SYNTHETIC: 10, COMBINED: 40, PRETRAIN: 40}
    real, synthetic = (Images(torch.zeros(n, 1, 32, 32), torch.zeros(n, 2)) for n in (own[REAL], own[SYNTHETIC]))
    for arm in ARMS:
        seen.clear()
        train_arm(arm, real, synthetic, cfg, False, 0)
        if matched:
            assert abs(sum(seen) - 4 * 40) <= own[arm] / 2
        else:
            assert sum(seen) == 4 * own[arm]


def test_twin_generator_config_is_a_pixel_space_model_of_the_twin_train_split() -> None:
    cfg = load_config(TrainConfig, TWIN_CONFIG.parent / "twin-pixel64.yaml")
    assert cfg.split == "train" and cfg.model.autoencoder.kind == "identity" and cfg.cache_dir is None
    assert cfg.model.denoiser.sample_size == cfg.image.size == 64 and cfg.model.denoiser.in_channels == 1
    assert cfg.model.text_encoder.pooling == "sentences"
    assert cfg.model.denoiser.context_len == cfg.model.text_encoder.max_sentences
