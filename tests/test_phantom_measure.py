"""The phantom measurer reads findings from pixels: accuracy, laterality, orderings."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.errors import DataError
from cxrgen.phantom import (
    PhantomFindings,
    accuracy,
    compare,
    measure,
    phantom_sample,
    render,
)

FRESH_SEED = 31337  # never used while the measurer's cuts were chosen


@pytest.mark.parametrize(("size", "n", "floor"), [(64, 300, 0.98), (32, 150, 0.98)])
def test_accuracy_on_fresh_renders(size: int, n: int, floor: float) -> None:
    rows = []
    for i in range(n):
        image, truth, _ = phantom_sample(i, size, FRESH_SEED)
        rows.append(compare(measure(image), truth))
    acc = accuracy(rows)
    for key in ("effusion_side", "effusion_size", "pneumothorax_side", "pneumothorax_extent",
                "cardiomegaly", "consolidation_lobe"):
        assert acc[key] >= floor, (key, acc)


@pytest.mark.parametrize("lobe", ["right_lower", "left_lower"])
def test_dense_lower_lobe_consolidation_is_not_taken_for_the_heart(lobe: str) -> None:
    """A consolidation denser than the heart (as guided samples draw them) is still read in its lobe."""
    from dataclasses import replace

    from cxrgen.phantom.measure import MEASURE

    with_it, without = (render(PhantomFindings(consolidation_lobe=c), 32, np.random.default_rng(3)) for c in (lobe, "none"))
    dense = np.clip(without + 2.0 * (with_it - without), 0.0, 1.0)  # the patch twice as dense
    assert measure(with_it).consolidation_lobe == lobe and measure(dense).consolidation_lobe == lobe
    everything_bright_is_heart = replace(MEASURE, heart_core=1.0)  # the rule before: reads none
    assert measure(dense, everything_bright_is_heart).consolidation_lobe == "none"


def test_flipped_image_reads_as_the_other_side() -> None:
    """Mirroring (done here ONLY to prove the measurer reads pixels) swaps every side it reports."""
    f = PhantomFindings(effusion_side="left", effusion_size="moderate", pneumothorax_side="right",
                        pneumothorax_extent="large", consolidation_lobe="left_upper")
    image = render(f, 64, np.random.default_rng(2))
    direct, mirrored = measure(image), measure(np.ascontiguousarray(image[:, ::-1]))
    assert (direct.effusion_side, direct.pneumothorax_side, direct.consolidation_lobe) == ("left", "right", "left_upper")
    assert (mirrored.effusion_side, mirrored.pneumothorax_side, mirrored.consolidation_lobe) == (
        "right", "left", "right_upper")


def test_effusion_sizes_ordered_by_measured_height() -> None:
    heights = []
    for size in ("none", "small", "moderate", "large"):
        side = "none" if size == "none" else "right"
        m = measure(render(PhantomFindings(effusion_side=side, effusion_size=size), 64, np.random.default_rng(4)))
        heights.append(m.effusion_height["right"])
        assert m.effusion_size == size
    assert heights == sorted(heights) and heights[-1] - heights[0] > 0.3


def test_ctr_ordering() -> None:
    ctrs = [0.42, 0.48, 0.55, 0.6, 0.65]
    measured = [measure(render(PhantomFindings(ctr=c), 64, np.random.default_rng(6))).ctr for c in ctrs]
    assert measured == sorted(measured)
    assert max(abs(m - c) for m, c in zip(measured, ctrs, strict=True)) < 0.04


def test_measure_other_sizes_and_compare() -> None:
    f = PhantomFindings(effusion_side="bilateral", effusion_size="small", ctr=0.62, consolidation_lobe="right_upper")
    for size in (48, 256):
        result = compare(measure(render(f, size, np.random.default_rng(8))), f)
        assert result["all"], (size, result)
    wrong = compare(measure(render(f, 64, np.random.default_rng(8))), PhantomFindings(ctr=0.45))
    assert not wrong["effusion_side"] and not wrong["cardiomegaly"] and not wrong["all"]
    assert wrong["pneumothorax_side"]


def test_measure_rejects_bad_images() -> None:
    with pytest.raises(DataError, match="square"):
        measure(np.zeros((32, 40), np.float32))
    with pytest.raises(DataError, match="contrast"):
        measure(np.zeros((32, 32), np.float32))
    with pytest.raises(DataError, match="comparisons"):
        accuracy([])
