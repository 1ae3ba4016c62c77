"""The whole engine on the shared data (the `covid_run` fixture: prepare -> cache -> 200 steps), then
resume and sampling: plumbing and exactness through the CLI like a user would, not image quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import yaml
from PIL import Image

from cxrgen.cli import main
from cxrgen.config import TrainConfig, from_dict
from cxrgen.config.sampling import DDPM_SAMPLER_NAMES
from cxrgen.train.trainer import train

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_trained_from_the_cache(covid_run: dict) -> None:
    shards = list((covid_run["root"] / "cache").glob("shard-*.safetensors"))
    assert shards, "the cache holds shards"
    metrics = (covid_run["out"] / "metrics.csv").read_text().splitlines()
    assert len(metrics) > covid_run["steps"] // 20  # a header and one line per log interval
    assert (covid_run["out"] / "model" / "model_index.json").is_file()


def test_resume_from_the_middle_is_exact(covid_run: dict, tmp_path: Path) -> None:
    cfg = from_dict(TrainConfig, yaml.safe_load(covid_run["config"].read_text()))
    full = train(cfg, out_dir=tmp_path / "full")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000100", tmp_path / "mid")
    resumed = train(cfg, resume=tmp_path / "mid", out_dir=tmp_path / "resumed")
    assert resumed["weights_sha256"] == full["weights_sha256"]


@pytest.mark.parametrize("sampler", DDPM_SAMPLER_NAMES)
def test_every_sampler_writes_pngs_with_metadata(covid_run: dict, tmp_path: Path, sampler: str) -> None:
    out = tmp_path / sampler
    code = main(["generate", "Bilateral patchy opacities.", "-n", "2", "--steps", "4", "--sampler", sampler,
                 "--seed", "3", "--model", str(covid_run["out"] / "model"), "--out", str(out), "--no-progress"])
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    info = Image.open(files[0]).text
    assert info["prompt"] == "Bilateral patchy opacities." and info["sampler"] == sampler
    assert info["synthetic"] == "true" and info["steps"] == "4"


def test_dicom_output(covid_run: dict, tmp_path: Path) -> None:
    code = main(["generate", "No acute cardiopulmonary process.", "--steps", "3", "--dicom",
                 "--model", str(covid_run["out"] / "model"), "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    ds = pydicom.dcmread(next(tmp_path.glob("*.dcm")))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
    assert "synthetic" in ds.ImageComments.lower()
