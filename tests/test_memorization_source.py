"""Memorization compares against the model's own training images, never a guess (issue 21, defect 2)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrgen.cli import main
from cxrgen.config import EvalConfig, EvaluatorConfig, ImageConfig
from cxrgen.data.images import save_png
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.training_set import memorization_sets
from cxrgen.train.checkpoint import CONFIG_NAME

SIZE = 32


def _images(root: Path, names: list[str], seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [save_png(rng.uniform(-1, 1, (SIZE, SIZE)), root / "img" / f"{n}.png", ImageConfig(size=SIZE))
            for n in names]


def _manifest(path: Path, images: list[Path], split: str | list[str]) -> Path:
    splits = [split] * len(images) if isinstance(split, str) else split
    rows = [{"source": "synthetic", "image_path": str(p), "patient_id": str(i), "prompt": "no finding", "split": s}
            for i, (p, s) in enumerate(zip(images, splits, strict=True))]
    return write_manifest(new_manifest(rows), path)


@pytest.fixture()
def world(tmp_path: Path) -> dict:
    """A real manifest (4 train + 4 test rows) and the model's own, different training manifest."""
    real_imgs = _images(tmp_path / "real", [f"r{i}" for i in range(8)], seed=0)
    real = _manifest(tmp_path / "real.csv", real_imgs, ["train"] * 4 + ["test"] * 4)
    own_imgs = _images(tmp_path / "own", [f"o{i}" for i in range(3)], seed=1)
    own = _manifest(tmp_path / "own.csv", own_imgs, "train")
    model = tmp_path / "model"
    model.mkdir()
    return {"root": tmp_path, "real": real, "real_imgs": real_imgs, "own": own, "own_imgs": own_imgs,
            "model": model}


def _cfg(world: dict, **kw) -> EvalConfig:
    return EvalConfig(model=str(world["model"]), prompts="p.csv", real_manifest=str(world["real"]), **kw)


def test_training_images_come_from_the_models_training_record(world: dict) -> None:
    (world["model"] / CONFIG_NAME).write_text(yaml.safe_dump({"manifests": [str(world["own"])], "split": "train"}))
    sets = memorization_sets(_cfg(world), str(world["model"]))
    assert sets.train == world["own_imgs"]  # not the real manifest's train rows
    assert sets.heldout == world["real_imgs"][4:] and sets.source == str(world["own"])


def test_without_record_or_flag_the_error_names_train_manifest(world: dict) -> None:
    with pytest.raises(ConfigError, match="--train-manifest"):
        memorization_sets(_cfg(world), str(world["model"]))


def test_record_naming_a_missing_manifest_is_an_error(world: dict) -> None:
    (world["model"] / CONFIG_NAME).write_text(yaml.safe_dump({"manifests": ["/nowhere/m.csv"], "split": "train"}))
    with pytest.raises(ConfigError, match="--train-manifest"):
        memorization_sets(_cfg(world), str(world["model"]))


def test_heldout_images_found_in_the_training_set_are_left_out_loudly(world: dict, caplog) -> None:
    leaked = world["root"] / "copy" / "leak.png"  # the same file as a held-out image, at another path
    leaked.parent.mkdir()
    shutil.copy(world["real_imgs"][5], leaked)
    train = _manifest(world["root"] / "train.csv", [*world["own_imgs"], leaked], "train")
    with caplog.at_level(logging.WARNING):
        sets = memorization_sets(_cfg(world, train_manifest=str(train)), str(world["model"]))
    assert world["real_imgs"][5] not in sets.heldout and len(sets.heldout) == 3
    assert sets.heldout_in_train == 1
    assert "1 of 4 held-out" in caplog.text


def test_cli_evaluate_without_a_training_record_stops_before_sampling(world: dict, tmp_path: Path, capsys) -> None:
    evaluator = CXREvaluator(EvaluatorConfig(arch="densenet-tiny", class_names=("No Finding",),
                                             image=ImageConfig(size=SIZE))).save_pretrained(tmp_path / "ev")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nno finding\n")
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(world["model"]), "--prompts", str(prompts), "--real",
                 str(world["real"]), "--out", str(out), "--evaluator", str(evaluator), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--train-manifest" in err and "Traceback" not in err
    assert not (out / "generated").exists()
