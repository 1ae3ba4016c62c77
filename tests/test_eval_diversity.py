"""MS-SSIM intra-prompt diversity: identical images score 1, noise far lower, shared structure in
between; fewer scales on small images; RoentGen fig. 3 length buckets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from cxrgen.config import ImageConfig
from cxrgen.errors import DataError
from cxrgen.evaluate.diversity import (
    MSSSIMSettings,
    diversity_by_length,
    ms_ssim_diversity,
    scales_for_size,
)

K = 4
SIZE = 64


def _noise(generator: torch.Generator, k: int = K, size: int = SIZE) -> torch.Tensor:
    return torch.rand(k, 1, size, size, generator=generator) * 2 - 1  # (K, 1, H, W) in [-1, 1]


def _smooth(generator: torch.Generator, k: int = K, size: int = SIZE) -> torch.Tensor:
    coarse = torch.rand(k, 1, size // 8, size // 8, generator=generator)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 2 - 1  # (K, 1, H, W)


def test_identical_images_score_one() -> None:
    g = torch.Generator().manual_seed(0)
    same = _smooth(g, k=1).repeat(K, 1, 1, 1)  # (K, 1, H, W)
    result = ms_ssim_diversity([same, same.clone()])
    assert result["per_prompt"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert result["mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["std"] == pytest.approx(0.0, abs=1e-6)


def test_noise_is_diverse_and_shared_structure_is_between() -> None:
    g = torch.Generator().manual_seed(1)
    independent = ms_ssim_diversity([_noise(g) for _ in range(3)])
    base = _smooth(g, k=1)
    related = ms_ssim_diversity([(base + 0.3 * _smooth(g)).clamp(-1, 1) for _ in range(3)])
    assert independent["mean"] < 0.2
    assert independent["mean"] < related["mean"] < 1.0 - 1e-3
    assert len(independent["per_prompt"]) == 3
    assert independent["mean"] == pytest.approx(sum(independent["per_prompt"]) / 3)


def test_small_images_use_fewer_renormalised_scales() -> None:
    settings = MSSSIMSettings()
    g = torch.Generator().manual_seed(2)
    result = ms_ssim_diversity([_noise(g)])
    assert result["scales"] == 3 == scales_for_size(SIZE, SIZE)
    kept = settings.betas[:3]
    assert result["betas"] == pytest.approx([b / sum(kept) for b in kept])
    assert scales_for_size(32, 32) == 2
    assert scales_for_size(175, 300) == 4  # the shorter side decides
    assert scales_for_size(176, 176) == len(settings.betas)
    with pytest.raises(DataError, match="at least 11 px"):
        scales_for_size(10, 64)


def test_full_size_matches_torchmetrics_defaults() -> None:
    g = torch.Generator().manual_seed(3)
    images = _smooth(g, k=2, size=176)
    result = ms_ssim_diversity([images])
    assert result["scales"] == 5
    unit = (images + 1) / 2  # (2, 1, H, W) in [0, 1]
    expected = multiscale_structural_similarity_index_measure(unit[:1], unit[1:], data_range=1.0)
    assert result["mean"] == pytest.approx(float(expected), abs=1e-6)


def test_value_range_is_mapped_to_unit_range() -> None:
    g = torch.Generator().manual_seed(4)
    images = _smooth(g)
    from_default = ms_ssim_diversity([images])["mean"]
    from_unit = ms_ssim_diversity([(images + 1) / 2], image_cfg=ImageConfig(low=0.0, high=1.0))["mean"]
    assert from_default == pytest.approx(from_unit, abs=1e-6)


def test_bad_inputs_raise() -> None:
    g = torch.Generator().manual_seed(5)
    with pytest.raises(DataError, match="K >= 2"):
        ms_ssim_diversity([_noise(g, k=1)])
    with pytest.raises(DataError, match="share one"):
        ms_ssim_diversity([_noise(g), _noise(g, size=32)])
    with pytest.raises(DataError, match="K >= 2"):
        ms_ssim_diversity([_noise(g)[0]])  # (1, H, W): a prompt's batch dimension is missing
    with pytest.raises(DataError, match="no prompts"):
        ms_ssim_diversity([])


def test_diversity_by_length_buckets() -> None:
    prompts = ["a b", "a b c", "w " * 12, "w " * 15, "w " * 31]
    scores = [0.1, 0.3, 0.5, 0.7, 0.9]
    rows = diversity_by_length(prompts, scores, lambda text: len(text.split()), bucket_width=10)
    assert [r[0] for r in rows] == ["0-9", "10-19", "30-39"]
    assert [r[2] for r in rows] == [2, 2, 1]
    assert [r[1] for r in rows] == pytest.approx([0.2, 0.6, 0.9])
    with pytest.raises(DataError, match="one score per prompt"):
        diversity_by_length(prompts, scores[:2], len)
