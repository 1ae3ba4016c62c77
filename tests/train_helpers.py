"""Tiny training setups for the trainer tests: synthetic PNGs + manifest, a tiny model config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tiny_models import WIDTH, make_bert

from cxrgen.config import ImageConfig, TrainConfig, from_dict
from cxrgen.data.images import save_png
from cxrgen.data.manifest import new_manifest, write_manifest

IMAGE_SIZE = 32
PROMPTS = ("left pleural effusion", "no acute disease", "right lower lobe opacity", "no finding")


def make_manifest(root: Path, n: int = 8) -> Path:
    """``n`` smooth random 32x32 PNGs (a blob at a random place) and a CSV manifest of them, all 'train'."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    rows = []
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        img = 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) - 1  # in [-1, 1]
        path = save_png(img, root / "images" / f"{i}.png", ImageConfig(size=IMAGE_SIZE))
        rows.append({"image_path": str(path.relative_to(root)), "prompt": PROMPTS[i % len(PROMPTS)],
                     "split": "train", "patient_id": str(i), "source": "synthetic"})
    return write_manifest(new_manifest(rows), root / "manifest.csv")


def tiny_config_dict(root: Path, **fields: Any) -> dict[str, Any]:
    """A TrainConfig dict of a tiny model (BERT width 16, 4x8x8 latents, U-ViT tiny) on make_manifest data."""
    bert = root / "bert"
    if not bert.is_dir():
        make_bert(bert)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        make_manifest(root)
    data: dict[str, Any] = {
        "model": {
            "image_size": IMAGE_SIZE,
            "text_encoder": {"backend": "bert", "name_or_path": str(bert), "max_length": 8},
            "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1,
                            "mid_block_add_attention": False},
            "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": WIDTH,
                         "context_len": 8},
        },
        "schedule": {"num_train_timesteps": 100},
        "manifests": [str(manifest)],
        "image": {"size": IMAGE_SIZE},
        "steps": 6, "batch_size": 3, "lr": 1e-3, "checkpoint_every": 2, "keep_checkpoints": 2,
        "log_every": 1, "progress": False, "out_dir": str(root / "run"), "ema_decay": 0.9,
        "cfg_dropout": 0.2,
    }
    for key, value in fields.items():
        data[key] = value
    return data


def tiny_config(root: Path, **fields: Any) -> TrainConfig:
    """tiny_config_dict as a TrainConfig."""
    return from_dict(TrainConfig, tiny_config_dict(root, **fields))


def write_config(root: Path, name: str = "train.yaml", **fields: Any) -> Path:
    """tiny_config_dict written as YAML for the CLI."""
    path = root / name
    path.write_text(yaml.safe_dump(tiny_config_dict(root, **fields)))
    return path


def covid_tiny_config(root: Path, manifest: Path, steps: int, **fields: Any) -> dict[str, Any]:
    """A tiny model (fresh f=4 codec, frozen real MiniLM, U-ViT tiny) on a prepared covid manifest, 32 px."""
    data: dict[str, Any] = {
        "model": {
            "image_size": IMAGE_SIZE,
            "text_encoder": {"backend": "minilm", "max_length": 32},
            "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1,
                            "mid_block_add_attention": False},
            "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": 384,
                         "context_len": 32},
        },
        "manifests": [str(manifest)],
        "image": {"size": IMAGE_SIZE},
        "steps": steps, "batch_size": 8, "lr": 1e-3, "checkpoint_every": steps, "keep_checkpoints": 2,
        "log_every": 20, "progress": False, "out_dir": str(root / "run"), "ema_decay": 0.99,
    }
    data.update(fields)
    return data
