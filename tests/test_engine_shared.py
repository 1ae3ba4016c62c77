"""The whole engine on the shared data: prepare -> cache -> train a few hundred steps -> resume -> sample.

A tiny model (fresh f=4 codec, frozen real MiniLM, U-ViT tiny) on the adult covid set at 32x32,
driven through the CLI like a user would; it checks plumbing and exactness, not image quality.
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
from cxrgen.config.sampling import SAMPLER_NAMES
from cxrgen.train.trainer import train

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
STEPS = 200


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("engine")
    assert main(["prepare", "covid", str(shared_data / "covid-cxr-256"), "--out", str(root / "covid"),
                 "--set", "views=[PA, AP, AP SUPINE]"]) == 0
    config = {
        "model": {
            "image_size": 32,
            "text_encoder": {"backend": "minilm", "max_length": 32},
            "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1,
                            "mid_block_add_attention": False},
            "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": 384,
                         "context_len": 32},
        },
        "manifests": [str(root / "covid" / "manifest.parquet")],
        "image": {"size": 32},
        "cache_dir": str(root / "cache"),
        "steps": STEPS, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 100, "keep_checkpoints": 2,
        "log_every": 20, "progress": False, "out_dir": str(root / "run"), "ema_decay": 0.99,
    }
    config_path = root / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["cache", str(config_path)]) == 0
    assert main(["train", str(config_path)]) == 0
    return {"root": root, "config": config_path, "out": root / "run"}


def test_trained_from_the_cache(run: dict) -> None:
    shards = list((run["root"] / "cache").glob("shard-*.safetensors"))
    assert shards, "the cache holds shards"
    metrics = (run["out"] / "metrics.csv").read_text().splitlines()
    assert len(metrics) > STEPS // 20  # a header and one line per log interval
    assert (run["out"] / "model" / "model_index.json").is_file()


def test_resume_from_the_middle_is_exact(run: dict, tmp_path: Path) -> None:
    cfg = from_dict(TrainConfig, yaml.safe_load(run["config"].read_text()))
    full = train(cfg, out_dir=tmp_path / "full")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000100", tmp_path / "mid")
    resumed = train(cfg, resume=tmp_path / "mid", out_dir=tmp_path / "resumed")
    assert resumed["weights_sha256"] == full["weights_sha256"]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_writes_pngs_with_metadata(run: dict, tmp_path: Path, sampler: str) -> None:
    out = tmp_path / sampler
    code = main(["generate", "Bilateral patchy opacities.", "-n", "2", "--steps", "4", "--sampler", sampler,
                 "--seed", "3", "--model", str(run["out"] / "model"), "--out", str(out), "--no-progress"])
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 2
    info = Image.open(files[0]).text
    assert info["prompt"] == "Bilateral patchy opacities." and info["sampler"] == sampler
    assert info["synthetic"] == "true" and info["steps"] == "4"


def test_dicom_output(run: dict, tmp_path: Path) -> None:
    code = main(["generate", "No acute cardiopulmonary process.", "--steps", "3", "--dicom",
                 "--model", str(run["out"] / "model"), "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    ds = pydicom.dcmread(next(tmp_path.glob("*.dcm")))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
    assert "synthetic" in ds.ImageComments.lower()
