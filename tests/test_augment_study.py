"""The augmentation study: end to end on a tiny random pipeline and a handful of shared pediatric images,
and its pieces (matched sizes, bootstrap CIs, pre-training then fine-tuning, leak checks, multi-label)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_pipeline

import cxrgen.evaluate.augment.train as augment_train
from cxrgen.cli import main
from cxrgen.config import DataConfig
from cxrgen.config.augment import ARMS, COMBINED, PRETRAIN, REAL, SYNTHETIC, AugmentStudyConfig
from cxrgen.data.manifest import ReadSummary, new_manifest, write_manifest
from cxrgen.data.readers.pediatric import read_pediatric
from cxrgen.errors import ConfigError, DataError, MissingColumnsError
from cxrgen.evaluate.augment.data import check_generator_unseen, check_patient_split, draw_rows, read_task
from cxrgen.evaluate.augment.stats import class_aurocs, summarise
from cxrgen.evaluate.augment.study import JSON_NAME, TABLE_NAME, run_augment_study, run_seeds
from cxrgen.evaluate.augment.synthetic import synthetic_plan
from cxrgen.evaluate.augment.train import AUGMENTATION, Images, train_arm

PER_CLASS = {"train": 5, "test": 4}  # patients per class and split drawn from the shared pediatric set
N, SIZE = 3, 32  # training images per class; classifier input side


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory) -> dict:
    """A small pediatric manifest (patient-level train / test) and a tiny random pipeline saved to disk."""
    root = tmp_path_factory.mktemp("augment")
    rows = read_pediatric(shared_data / "pediatric-pneumonia-224", DataConfig(), ReadSummary("pediatric")).rows
    picked, used = [], set()
    for _, group in rows.groupby("finding"):
        group = group[~group["patient_id"].isin(used)].drop_duplicates("patient_id")  # one image per patient
        for split, start, stop in (("train", 0, PER_CLASS["train"]),
                                   ("test", PER_CLASS["train"], sum(PER_CLASS.values()))):
            picked.append(group.iloc[start:stop].assign(split=split))
        used |= set(group["patient_id"].iloc[: sum(PER_CLASS.values())])
    manifest = write_manifest(new_manifest(pd.concat(picked).to_dict("records")), root / "manifest.parquet")
    model = tiny_pipeline(root).save_pretrained(root / "model")
    return {"root": root, "manifest": manifest, "model": model}


def config(setup: dict, out: Path, **kw) -> AugmentStudyConfig:
    base = dict(manifest=str(setup["manifest"]), out_dir=str(out), model=str(setup["model"]),
                cache_dir=str(setup["root"] / "cache"), model_train_manifests=(str(setup["manifest"]),),
                n_real=N, seeds=(0, 1), epochs=2, image_size=SIZE, bootstrap=100, progress=False)
    return AugmentStudyConfig(**{**base, **kw})


@pytest.mark.shared_data
def test_end_to_end_cli_then_cached_rerun(setup: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "study"
    args = ["augment-study", str(setup["manifest"]), "--out", str(out), "--model", str(setup["model"]),
            "--cache", str(setup["root"] / "cache"), "--n-real", str(N), "--seeds", "0,1", "--epochs", "2",
            "--image-size", str(SIZE), "--no-progress"]
    assert main(args) == 2  # the tiny model has no training record: the test split cannot be checked
    assert "--model-train-manifest" in capsys.readouterr().err
    assert main([*args, "--model-train-manifest", str(setup["manifest"])]) == 0
    result = json.loads((out / JSON_NAME).read_text())
    assert set(result["auroc"]["arms"]) == set(ARMS) and result["classes"] == ["bacterial pneumonia", "normal",
                                                                               "viral pneumonia"]
    assert result["sizes"]["arms"][COMBINED] == {"real": 3 * N, "synthetic": 3 * N}
    assert result["sizes"]["test"] == 3 * PER_CLASS["test"] and result["synthetic"]["images"] == 3 * N
    assert "real+synthetic" in (out / TABLE_NAME).read_text() and (out / "augment_study.png").stat().st_size > 0
    for entry in result["auroc"]["arms"].values():
        low, high = entry["macro"]["ci"]
        assert low <= entry["macro"]["auroc"] <= high and len(entry["macro"]["seeds"]) == 2
    assert "delta_vs_real" in result["auroc"]["arms"][SYNTHETIC]
    prompts = set(pd.read_csv(Path(result["synthetic"]["table"]))["prompt"])
    assert prompts == set(pd.read_parquet(setup["manifest"])["prompt"])  # the wording the model trained on

    def no_model(*a, **k):
        raise AssertionError("a rerun must reuse the cached images, not load the model")

    monkeypatch.setattr("cxrgen.evaluate.augment.synthetic.load_pipeline", no_model)
    again = run_augment_study(config(setup, tmp_path / "again", arms=(SYNTHETIC,), seeds=(0,)))
    assert again["auroc"]["arms"][SYNTHETIC]["macro"]["seeds"][0] == result["auroc"]["arms"][SYNTHETIC]["macro"][
        "seeds"][0]  # same images, same seed: the same classifier


@pytest.mark.shared_data
def test_matched_sizes_and_same_start_per_seed(setup: dict, tmp_path: Path, monkeypatch) -> None:
    seen = []

    def record(arm, real, synthetic, cfg, multiclass, seed):
        seen.append((arm, seed, real.targets.sum(0).tolist(), synthetic.targets.sum(0).tolist()))
        return augment_train.new_classifier(cfg, real.targets.shape[1], torch.Generator().manual_seed(seed))

    monkeypatch.setattr("cxrgen.evaluate.augment.study.train_arm", record)
    cfg = config(setup, tmp_path)
    task = read_task(cfg)
    syn_paths, syn = task.train["path"].tolist(), task.train_targets  # a pool of 5 "synthetic" images per class
    probs = run_seeds(task, syn_paths, syn, cfg, torch.zeros(len(task.test), 1, SIZE, SIZE))
    assert {a: p.shape for a, p in probs.items()} == {a: (2, len(task.test), 3) for a in ARMS}
    assert all(real == [N] * 3 and synthetic == [N] * 3 for _, _, real, synthetic in seen)  # n per class each
    assert sorted({s for _, s, _, _ in seen}) == [0, 1] and len(seen) == 2 * len(ARMS)


def _toy(n: int = 24) -> tuple[Images, Images]:
    g = torch.Generator().manual_seed(0)
    targets = torch.eye(3)[torch.arange(n) % 3]
    return (Images(torch.rand(n, 1, SIZE, SIZE, generator=g) * 2 - 1, targets),
            Images(torch.rand(n, 1, SIZE, SIZE, generator=g) * 2 - 1, targets))


def test_pretrain_then_finetune_starts_from_the_pretrained_weights(tmp_path: Path, monkeypatch) -> None:
    real, synthetic = _toy()
    calls, fit = [], augment_train.fit

    def spy(net, data, *args, **kw):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        fit(net, data, *args, **kw)
        calls.append({"data": data, "before": before, "after": {k: v.clone() for k, v in net.state_dict().items()}})
        return net

    monkeypatch.setattr(augment_train, "fit", spy)
    cfg = AugmentStudyConfig(manifest="m", n_real=8, epochs=1, image_size=SIZE, progress=False)
    net = train_arm(PRETRAIN, real, synthetic, cfg, True, seed=3)
    assert [c["data"] for c in calls] == [synthetic, real]  # synthetic pre-training, then real fine-tuning
    pre, fine = calls
    assert all(torch.equal(fine["before"][k], pre["after"][k]) for k in pre["after"])
    assert any(not torch.equal(pre["before"][k], pre["after"][k]) for k in pre["after"])  # pre-training moved it
    assert all(torch.equal(net.state_dict()[k], fine["after"][k]) for k in fine["after"])
    calls.clear()
    train_arm(REAL, real, synthetic, cfg, True, seed=3)  # the real-only arm starts where pre-training started
    assert all(torch.equal(calls[0]["before"][k], pre["before"][k]) for k in pre["before"])


def test_bootstrap_ci_brackets_the_estimate_and_ranks_good_above_bad() -> None:
    rng = np.random.default_rng(0)
    targets = np.eye(3)[rng.integers(0, 3, 200)]
    good = np.stack([targets + rng.normal(0, 0.6, targets.shape) for _ in range(3)])  # (seeds, n, C)
    bad = rng.random((3, 200, 3))
    out = summarise({"good": good, "bad": bad}, targets, ["a", "b", "c"], 200, 0.95, rng, reference="bad")
    for arm in ("good", "bad"):
        entry = out["arms"][arm]
        for e in (entry["macro"], *entry["per_class"].values()):
            assert e["ci"][0] <= e["auroc"] <= e["ci"][1] and e["ci"][0] < e["ci"][1]
    assert out["arms"]["good"]["macro"]["ci"][0] > out["arms"]["bad"]["macro"]["ci"][1]
    delta = out["arms"]["good"]["delta_vs_bad"]
    assert delta["ci"][0] > 0 and delta["p_not_better"] == 0.0
    from sklearn.metrics import roc_auc_score

    assert class_aurocs(good, targets)[1, 2] == pytest.approx(roc_auc_score(targets[:, 2], good[1, :, 2]))


def test_draws_are_per_class_without_replacement_and_say_when_short() -> None:
    targets = np.eye(3)[np.repeat([0, 1, 2], [10, 4, 6])]
    idx = draw_rows(targets, 4, True, np.random.default_rng(0))
    assert targets[idx].sum(0).tolist() == [4, 4, 4] and len(set(idx)) == 12
    with pytest.raises(DataError, match="only 4"):
        draw_rows(targets, 5, True, np.random.default_rng(0))
    assert len(draw_rows(targets, 7, False, np.random.default_rng(0))) == 7


@pytest.mark.shared_data
def test_test_split_never_shares_a_patient(setup: dict, tmp_path: Path) -> None:
    cfg = config(setup, tmp_path)
    task = read_task(cfg)
    assert not set(task.train["patient_id"]) & set(task.test["patient_id"])
    leaky = task.test.iloc[:1].assign(split="train")  # a test patient also in training
    with pytest.raises(DataError, match="both"):
        check_patient_split(pd.concat([task.train, leaky]), task.test, cfg)
    with pytest.raises(DataError, match="generative model was trained on"):  # its record lists every split
        check_generator_unseen(task.test, config(setup, tmp_path, model_train_manifests=()),
                               str(_record(setup, tmp_path, "test")))
    assert "no test patient" in check_generator_unseen(task.test, cfg, str(setup["model"]))
    with pytest.raises(ConfigError, match="--model-train-manifest"):
        check_generator_unseen(task.test, config(setup, tmp_path, model_train_manifests=()), str(setup["model"]))


def _record(setup: dict, tmp_path: Path, split: str) -> Path:
    """A model folder whose training record names the study's manifest and ``split``."""
    folder = tmp_path / "recorded"
    folder.mkdir(exist_ok=True)
    (folder / "train_config.yaml").write_text(f"manifests: [{setup['manifest']}]\nsplit: {split}\n")
    return folder


@pytest.mark.shared_data
def test_prompts_follow_the_training_wording_and_bad_input_is_named(setup: dict, tmp_path: Path) -> None:
    task = read_task(config(setup, tmp_path))
    plan = synthetic_plan(task, config(setup, tmp_path))
    assert [(p.prompt, p.count) for p in plan] == [
        (f"Pediatric AP chest radiograph. {c}", N) for c in ("Bacterial pneumonia.", "Normal.", "Viral pneumonia.")]
    assert len({p.seed(0) for p in plan}) == 3  # classes do not share noise
    with pytest.raises(MissingColumnsError, match="diagnosis"):
        read_task(config(setup, tmp_path, label_column="diagnosis"))
    bad_csv = tmp_path / "synthetic.csv"
    pd.DataFrame({"image_path": ["a.png"]}).to_csv(bad_csv, index=False)
    with pytest.raises(MissingColumnsError, match="finding"):
        run_augment_study(config(setup, tmp_path / "x", synthetic_csv=str(bad_csv)))
    with pytest.raises(ConfigError, match="exactly one"):
        config(setup, tmp_path, label_columns=("Pneumonia",))


@pytest.mark.shared_data
def test_multi_label_task_from_a_folder_of_images(setup: dict, tmp_path: Path) -> None:
    """The CT twin's shape: CheXpert 1/0 columns, synthetic images given as a CSV (here: real images)."""
    df = pd.read_parquet(setup["manifest"]).query("split == 'train'")
    pd.DataFrame({"image_path": df["image_path"], "No Finding": df["No Finding"],
                  "Pneumonia": df["Pneumonia"]}).to_csv(tmp_path / "mine.csv", index=False)
    cfg = config(setup, tmp_path / "out", label_column=None, label_columns=("No Finding", "Pneumonia"), n_real=6,
                 synthetic_csv=str(tmp_path / "mine.csv"), model=None, arms=(REAL, COMBINED), seeds=(0,))
    result = run_augment_study(cfg)
    assert result["kind"] == "multi-label" and result["sizes"]["arms"][COMBINED] == {"real": 6, "synthetic": 6}
    assert set(result["auroc"]["arms"][REAL]["per_class"]) == {"No Finding", "Pneumonia"}


def test_augmentation_never_mirrors() -> None:
    image = -torch.ones(16, 1, SIZE, SIZE)
    image[..., : SIZE // 4] = 1.0  # bright band on the image's left
    from cxrgen.config import ImageConfig
    from cxrgen.evaluate.train_evaluator import augment

    moved = augment(image, AUGMENTATION, ImageConfig(size=SIZE), torch.Generator().manual_seed(0))
    left, right = moved[..., : SIZE // 2].mean(), moved[..., SIZE // 2 :].mean()
    assert left > right + 0.5
