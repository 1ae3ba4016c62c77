"""C2ST, SWD, PRDC and per-finding FID: each ranks a known-good set above a known-bad one, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrgen.evaluate.c2st import C2STSettings, c2st, wilson_interval
from cxrgen.evaluate.image_pairs import NotEnoughImagesError
from cxrgen.evaluate.per_finding import fid_per_finding, prompt_findings
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.swd import _pyr_up, laplacian_pyramid, swd

SIZE = 32
FAST = C2STSettings(folds=4, size=32, epochs=8)


def blobs(n: int, seed: int, noise: float = 0.3) -> torch.Tensor:
    """(n, 1, SIZE, SIZE) in [-1, 1]: a bright blob at a random place on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    cx, cy = 8 + 16 * torch.rand(n, generator=g), 8 + 16 * torch.rand(n, generator=g)
    blob = torch.exp(-((xx - cx.view(n, 1, 1)) ** 2 + (yy - cy.view(n, 1, 1)) ** 2) / 30.0)
    out = noise * torch.rand(n, SIZE, SIZE, generator=g) + 0.7 * blob
    return (out.clamp(0, 1) * 2 - 1).unsqueeze(1)


def test_wilson_interval_matches_the_textbook_value() -> None:
    low, high = wilson_interval(8, 10, 0.95)  # Wilson 1927; e.g. Newcombe 1998, table I
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)


def test_c2st_is_near_chance_for_one_distribution_and_high_for_two() -> None:
    same = c2st(blobs(48, 0), blobs(48, 1), FAST, torch.Generator().manual_seed(0))
    other = c2st(blobs(48, 0), blobs(48, 2, noise=0.8), FAST, torch.Generator().manual_seed(0))
    assert same["cnn_ci"][0] < 0.5 + 0.05 and same["linear_ci"][0] < 0.55 and same["cnn"] < 0.7
    assert other["cnn"] > 0.9 and other["linear"] > 0.9 and other["cnn_p_value"] < 1e-6
    assert other["cnn_ci"][0] > 0.5 and other["n"] == 48
    assert len(other["most_generated"]) == FAST.top
    probs = [t["p_generated"] for t in other["most_generated"]]
    assert probs == sorted(probs, reverse=True) and all(0 <= t["index"] < 48 for t in other["most_generated"])


def test_c2st_says_how_many_images_it_needs() -> None:
    with pytest.raises(NotEnoughImagesError, match="at least 8 generated images, got 5"):
        c2st(blobs(20, 0), blobs(5, 1), FAST)


def test_c2st_converts_channels_sizes_and_counts_with_notes() -> None:
    real = blobs(30, 0).expand(-1, 3, -1, -1)  # (30, 3, 32, 32) RGB
    gen = torch.nn.functional.interpolate(blobs(20, 1), size=48)  # (20, 1, 48, 48)
    result = c2st(real, gen, C2STSettings(folds=2, size=16, epochs=1))
    notes = " ".join(result["notes"])
    assert "3 channels" in notes and "30 real vs 20 generated" in notes and result["n"] == 20


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    image = blobs(2, 0)
    levels = laplacian_pyramid(image, min_resolution=8)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    x = levels[-1]
    for band in reversed(levels[:-1]):
        x = band + _pyr_up(x, band.shape[-2], band.shape[-1])
    torch.testing.assert_close(x, image)


def test_swd_ranks_same_distribution_below_blur_below_noise() -> None:
    real, heldout = blobs(32, 0), blobs(32, 1)
    smooth = torch.nn.functional.avg_pool2d(heldout, 3, stride=1, padding=1)
    noise = torch.rand(32, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    values = [swd(real, x, generator=torch.Generator().manual_seed(0))["mean"] for x in (heldout, smooth, noise)]
    assert values[0] < values[1] < values[2]
    with pytest.raises(NotEnoughImagesError, match="at least 8"):
        swd(real, noise[:3])


def test_prdc_of_matching_and_shifted_features() -> None:
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    match, shifted = prdc(real, same), prdc(real, same + 5.0)
    assert match["precision"] > 0.8 and match["recall"] > 0.8 and match["coverage"] > 0.9
    assert 0.7 < match["density"] < 1.3
    assert shifted["precision"] < 0.05 and shifted["recall"] < 0.05 and shifted["coverage"] < 0.05
    collapsed = prdc(real, same * 0.1)  # mode collapse: precise but covers little
    assert collapsed["precision"] > 0.9 and collapsed["coverage"] < match["coverage"] and collapsed["recall"] < 0.3
    with pytest.raises(NotEnoughImagesError, match="at least 6 generated"):
        prdc(real, same[:5])


def test_fid_per_finding_compares_like_with_like() -> None:
    labels = prompt_findings(["Large left pleural effusion.", "No acute cardiopulmonary process.",
                              "Cardiomegaly."])
    names = ["Pleural Effusion", "No Finding", "Cardiomegaly"]
    from cxrgen.data.manifest import CHEXPERT_LABELS

    cols = [CHEXPERT_LABELS.index(n) for n in names]
    assert labels[0, cols[0]] == 1 and labels[1, cols[1]] == 1 and labels[2, cols[2]] == 1
    g = torch.Generator().manual_seed(0)
    real_f = torch.cat([torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g) + 3])  # effusion, normal
    real_labels = np.full((80, len(CHEXPERT_LABELS)), np.nan)
    real_labels[:40, cols[0]], real_labels[40:, cols[1]] = 1, 1
    gen_f = torch.cat([torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g) + 3, torch.randn(1, 4)])
    gen_labels = np.repeat(labels, [30, 30, 1], axis=0)
    good = fid_per_finding({"x": real_f}, real_labels, {"x": gen_f}, gen_labels)
    swapped = fid_per_finding({"x": real_f}, real_labels, {"x": gen_f[[*range(30, 60), *range(30), 60]]}, gen_labels)
    assert set(good) == set(names)
    assert good["Pleural Effusion"]["n_generated"] == 30 and good["Pleural Effusion"]["n_real"] == 40
    assert good["Pleural Effusion"]["fid"]["x"] < 0.2 * swapped["Pleural Effusion"]["fid"]["x"]
    assert good["Cardiomegaly"]["fid"]["x"] is None and "at least 2" in good["Cardiomegaly"]["note"]


def test_swd_converts_channels_and_sizes_with_notes() -> None:
    real = blobs(12, 0).expand(-1, 3, -1, -1)  # (12, 3, 32, 32) RGB
    gen = torch.nn.functional.interpolate(blobs(10, 1), size=64)  # (10, 1, 64, 64)
    result = swd(real, gen, generator=torch.Generator().manual_seed(0))
    notes = " ".join(result["notes"])
    assert "3 channels" in notes and "differ in size ([32, 64] px): both resized to 32 px" in notes
    assert result["image_size"] == SIZE and result["n_real"] == 12 and result["n_generated"] == 10
