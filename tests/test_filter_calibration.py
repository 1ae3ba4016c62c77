"""Quality-filter calibration: operating points from held-out images, and real images accepted with their
own prompts far more often than with contradicting (normal <-> pneumonia) prompts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_quality_filter import CLASSES, forced_evaluator

from cxrgen.cli import main
from cxrgen.config import DataConfig, EvaluatorConfig, ImageConfig
from cxrgen.data.manifest import ReadSummary, new_manifest, write_manifest
from cxrgen.data.readers.pediatric import read_pediatric
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.filter_calibration import (
    calibrate_filter,
    contradicting_prompts,
    evaluator_probabilities,
    filter_acceptance,
    folder_acceptance,
    heldout_rows,
    operating_point,
)
from cxrgen.evaluate.quality_filter import (
    OPERATING_POINTS_NAME,
    PromptConsistencyFilter,
    load_filter,
    load_operating_points,
)
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.train_ssl import HELDOUT_NAME

PER_KIND = 12  # real held-out images per kind (normal, pneumonia) and split


@pytest.fixture(scope="module")
def heldout_manifest(shared_data: Path, tmp_path_factory) -> Path:
    """A manifest of 12 normal + 12 pneumonia pediatric images from each of the shipped evaluator's held-out
    validate and test splits (the splits it lists in heldout_images.json; the rest marked train)."""
    rows = read_pediatric(shared_data / "pediatric-pneumonia-224", DataConfig(), ReadSummary("pediatric")).rows
    heldout = json.loads((DEFAULT_EVALUATOR / HELDOUT_NAME).read_text())["pediatric"]
    names = rows["image_path"].map(lambda p: Path(p).name)
    rows["split"] = np.where(names.isin(heldout["test"]), "test",
                             np.where(names.isin(heldout["validate"]), "validate", "train"))
    rows = rows.sort_values("image_path")
    picked = [rows[(rows["split"] == split) & (rows[kind] == 1.0)].head(PER_KIND)
              for split in ("validate", "test") for kind in CLASSES]
    return write_manifest(new_manifest(pd.concat(picked).to_dict("records")),
                          tmp_path_factory.mktemp("calib") / "manifest.parquet")


def test_operating_point_youden_and_target_specificity() -> None:
    probs = np.array([0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.6])
    labels = np.array([0.0, 0.0, 0.0, 1.0, 1.0, np.nan, 1.0])  # NaN: not a label, ignored
    youden = operating_point(probs, labels)
    assert youden["threshold"] == pytest.approx(0.3) and youden["sensitivity"] == youden["specificity"] == 1.0
    labels = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    strict = operating_point(probs, labels, "specificity", target_specificity=1.0)
    assert strict["specificity"] == 1.0 and strict["threshold"] > 0.35
    with pytest.raises(DataError, match="both"):
        operating_point(probs, np.ones(7))
    with pytest.raises(ConfigError, match="method"):
        operating_point(probs, labels, "f1")


def test_calibrated_points_replace_the_fixed_threshold(tmp_path: Path, caplog) -> None:
    images = torch.zeros(2, 1, 32, 32)
    evaluator = forced_evaluator(-1.0, 1.0)  # P(No Finding) = 0.27, P(Pneumonia) = 0.73: a shy "normal"
    fixed = PromptConsistencyFilter(evaluator, 0.5)
    calibrated = PromptConsistencyFilter(evaluator, operating_points={"No Finding": 0.2, "Pneumonia": 0.8})
    assert (fixed.judge("Normal chest radiograph.", images) > 0).all()
    assert (calibrated.judge("Normal chest radiograph.", images) <= 0).all()
    assert (calibrated.judge("Right lower lobe pneumonia.", images) > 0).all()  # 0.73 < 0.8
    with pytest.raises(ConfigError, match="calibrate-filter"):
        PromptConsistencyFilter(evaluator, operating_points={"No Finding": 0.2})
    evaluator.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert load_filter(tmp_path).operating_points is None  # not calibrated: fixed 0.5, said so
    assert OPERATING_POINTS_NAME in caplog.text
    (tmp_path / OPERATING_POINTS_NAME).write_text(json.dumps({"classes": {c: {"threshold": 0.3} for c in CLASSES}}))
    assert load_filter(tmp_path).operating_points == {"No Finding": 0.3, "Pneumonia": 0.3}
    assert load_filter(tmp_path, threshold=0.5).operating_points is None  # a given T still forces a fixed one
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (tmp_path / OPERATING_POINTS_NAME).write_text(json.dumps(
            {"classes": {c: {"threshold": 0.3} for c in CLASSES}, "evaluator_weights_sha1": "0" * 40}))
        load_operating_points(tmp_path)
    assert "other weights" in caplog.text  # retrained since calibration: said so
    (tmp_path / OPERATING_POINTS_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="calibrate-filter"):
        load_operating_points(tmp_path)


def test_calibrate_filter_uses_only_listed_heldout_images(heldout_manifest: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)  # test-side seeding of a random tiny network
    CXREvaluator(EvaluatorConfig(arch="densenet-tiny", class_names=CLASSES, image=ImageConfig(size=32))
                 ).save_pretrained(tmp_path)
    with pytest.raises(DataError, match=HELDOUT_NAME):
        calibrate_filter([heldout_manifest], tmp_path, progress=False)
    assert main(["calibrate-filter", str(tmp_path), "--data", str(heldout_manifest)]) == 2  # one line, no trace
    assert HELDOUT_NAME in capsys.readouterr().err
    validate = heldout_rows([heldout_manifest], "validate", DEFAULT_EVALUATOR)
    listed = [Path(p).name for p in validate["image_path"]][2:-2]  # 4 validate images not listed as held out
    test = [Path(p).name for p in heldout_rows([heldout_manifest], "test", DEFAULT_EVALUATOR)["image_path"]]
    (tmp_path / HELDOUT_NAME).write_text(json.dumps({"pediatric": {"validate": listed, "test": test}}))
    result = calibrate_filter([heldout_manifest], tmp_path, progress=False)
    assert result["images"] == 2 * PER_KIND - 4 and set(result["classes"]) == set(CLASSES)
    assert load_filter(tmp_path).operating_points == {c: v["threshold"] for c, v in result["classes"].items()}
    accepted = result["test_acceptance"]["calibrated"]
    assert accepted["images"] == 2 * PER_KIND and accepted["by_image"]["normal"]["images"] == PER_KIND
    (tmp_path / OPERATING_POINTS_NAME).unlink()
    assert main(["calibrate-filter", str(tmp_path), "--data", str(heldout_manifest), "--method", "specificity",
                 "--test-split", "", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "specificity" and "test_acceptance" not in printed
    assert not (tmp_path / OPERATING_POINTS_NAME).exists()  # --dry-run writes nothing


def test_contradicting_prompts_swap_normal_and_pneumonia(heldout_manifest: Path) -> None:
    rows = heldout_rows([heldout_manifest], "test", DEFAULT_EVALUATOR)
    swapped = contradicting_prompts(rows)
    for normal, prompt in zip(rows["No Finding"] == 1.0, swapped, strict=True):
        assert ("Normal" in prompt) != bool(normal)


def test_shipped_filter_accepts_own_prompts_far_more_than_swapped(heldout_manifest: Path) -> None:
    """Real held-out test images: accepted with their own prompt, rejected with the opposite class's."""
    rows = heldout_rows([heldout_manifest], "test", DEFAULT_EVALUATOR)
    evaluator = CXREvaluator.from_pretrained(DEFAULT_EVALUATOR)
    probs = evaluator_probabilities(evaluator, list(rows["image_path"]), progress=False)
    calibrated = filter_acceptance(load_filter(), rows, probs)  # the default: shipped operating points
    fixed = filter_acceptance(PromptConsistencyFilter(evaluator, 0.5), rows, probs)
    assert calibrated["images"] == 2 * PER_KIND
    assert calibrated["own_accepted"] - calibrated["swapped_accepted"] >= 0.4
    for kind in ("normal", "pneumonia"):  # each kind on its own, not only on average
        assert calibrated["by_image"][kind]["own_accepted"] > calibrated["by_image"][kind]["swapped_accepted"]
    assert calibrated["by_image"]["normal"]["own_accepted"] > fixed["by_image"]["normal"]["own_accepted"]


def test_folder_acceptance_labels_generated_files_by_their_prompts(tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    prompts = ["Pediatric AP chest radiograph. Normal.", "Normal chest radiograph.", "Right lower lobe pneumonia.",
               "Large left pneumothorax."]  # the last states neither kind: skipped
    for i, prompt in enumerate(prompts):
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", prompt)
        Image.new("L", (32, 32), 40 * i).save(tmp_path / f"{i:05d}.png", pnginfo=info)
    says_normal = PromptConsistencyFilter(forced_evaluator(5.0, -5.0), 0.5)
    result = folder_acceptance(tmp_path, says_normal)
    assert result["skipped"] == 1 and result["by_image"]["normal"]["images"] == 2
    assert result["by_image"]["normal"]["own_accepted"] == 1.0 and result["by_image"]["normal"]["swapped_accepted"] == 0
    assert result["by_image"]["pneumonia"] == {"images": 1, "own_accepted": 0.0, "swapped_accepted": 1.0}
    with pytest.raises(DataError, match="PNG"):
        folder_acceptance(tmp_path / "empty", says_normal)
