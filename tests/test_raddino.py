"""The rad-dino extractor on a tiny random transformers Dinov2Model saved to a temp dir (never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from cxrgen.evaluate.extractors import (
    RAD_DINO_SIZE,
    ExtractorUnavailableError,
    RadDinoExtractor,
    build_extractor,
)

HIDDEN = 32


def tiny_dino(folder: Path, processor: dict | None = None) -> Path:
    torch.manual_seed(0)  # test-side seeding of the random tiny network
    cfg = Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=14)
    Dinov2Model(cfg).save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_rad_dino_from_a_local_folder_gives_cls_features(tmp_path: Path) -> None:
    folder = tiny_dino(tmp_path / "dino", {"crop_size": {"height": 28, "width": 28}, "image_mean": [0.5] * 3,
                                           "image_std": [0.25] * 3})
    extractor = build_extractor("rad-dino", folder)
    assert isinstance(extractor, RadDinoExtractor) and extractor.image_size == 28 and extractor.feature_dim == HIDDEN
    x = images(3, 0)
    feats = extractor.features(x)
    assert feats.shape == (3, HIDDEN) and torch.isfinite(feats).all()
    torch.testing.assert_close(extractor.features(x), feats)
    assert not torch.allclose(feats[0], feats[1])
    # the CLS embedding of the same pixels through transformers directly
    rgb = ((torch.nn.functional.interpolate(x, size=28, mode="bilinear", antialias=True) + 1) / 2).expand(-1, 3, -1, -1)
    with torch.no_grad():
        direct = Dinov2Model.from_pretrained(folder)(pixel_values=(rgb - 0.5) / 0.25).pooler_output
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-4)


def test_rad_dino_without_a_processor_file_uses_rad_dino_preprocessing(tmp_path: Path) -> None:
    extractor = build_extractor("rad-dino", tiny_dino(tmp_path / "dino"))
    assert extractor.image_size == RAD_DINO_SIZE
    assert extractor.features(images(1, 1)).shape == (1, HIDDEN)


def test_rad_dino_that_cannot_load_says_how_to_give_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractorUnavailableError, match="rad-dino=FOLDER"):
        build_extractor("rad-dino", tmp_path / "empty")
