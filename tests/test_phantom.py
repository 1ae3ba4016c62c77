"""The procedural phantom: findings, rendering, reports and writing a set to disk."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrgen.config import DataConfig, PhantomConfig
from cxrgen.data.images import read_image
from cxrgen.data.prepare import build_manifest
from cxrgen.errors import ConfigError
from cxrgen.phantom import (
    PhantomFindings,
    benchmark_prompts,
    render,
    report_for,
    sample_findings,
    write_phantom_set,
)
from cxrgen.phantom.anatomy import CANONICAL
from cxrgen.phantom.control import negated_findings
from cxrgen.phantom.render import heart_axes
from cxrgen.phantom.reports import TEMPLATES

LEFT_LARGE = PhantomFindings(effusion_side="left", effusion_size="large")
RIGHT_LARGE = PhantomFindings(effusion_side="right", effusion_size="large")


def _box(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    n = img.shape[0]
    return float(img[round(y0 * n):round(y1 * n), round(x0 * n):round(x1 * n)].mean())


@pytest.mark.parametrize("size", [32, 64, 256])
def test_render_shape_range_and_determinism(size: int) -> None:
    f = PhantomFindings(pneumothorax_side="left", pneumothorax_extent="apical", consolidation_lobe="right_upper")
    a = render(f, size, np.random.default_rng(3))
    b = render(f, size, np.random.default_rng(3))
    c = render(f, size, np.random.default_rng(4))
    assert a.shape == (size, size) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_effusion_brightens_the_patients_side() -> None:
    """Patient's left = image's RIGHT: a left effusion brightens the image's right lower zone."""
    lateral_right, lateral_left = (0.76, 0.86, 0.6, 0.74), (0.14, 0.24, 0.6, 0.74)
    left = render(LEFT_LARGE, 64, np.random.default_rng(0))
    right = render(RIGHT_LARGE, 64, np.random.default_rng(0))
    assert _box(left, *lateral_right) > _box(left, *lateral_left) + 0.1
    assert _box(right, *lateral_left) > _box(right, *lateral_right) + 0.1


def test_heart_extends_to_the_image_right() -> None:
    cx, _, _ = heart_axes(CANONICAL, 0.45)
    assert cx > CANONICAL.midline
    img = render(PhantomFindings(ctr=0.45), 64, np.random.default_rng(1), PhantomConfig(anatomy_jitter=0.0))
    assert _box(img, 0.62, 0.68, 0.6, 0.7) > _box(img, 0.32, 0.38, 0.6, 0.7) + 0.1


def test_sample_findings_is_balanced_and_conflict_free() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(3000)]
    assert all(not f.conflicts() for f in draws)
    normal = sum(f.is_normal for f in draws) / len(draws)
    assert 0.15 < normal < 0.4
    for key in ("effusion_side", "pneumothorax_side"):
        counts = Counter(getattr(f, key) for f in draws)
        assert abs(counts["right"] - counts["left"]) < 0.25 * (counts["right"] + counts["left"])
    assert set(Counter(f.effusion_size for f in draws)) == {"none", "small", "moderate", "large"}
    assert set(Counter(f.consolidation_lobe for f in draws)) == {"none", "right_upper", "right_lower",
                                                                  "left_upper", "left_lower"}
    assert 0.15 < np.mean([f.cardiomegaly for f in draws]) < 0.5


def test_findings_validation_and_conflicts() -> None:
    with pytest.raises(ConfigError, match="effusion_side"):
        PhantomFindings(effusion_side="middle", effusion_size="small")
    with pytest.raises(ConfigError, match="both or neither"):
        PhantomFindings(effusion_side="left")
    with pytest.raises(ConfigError, match="ctr"):
        PhantomFindings(ctr=1.5)
    clash = PhantomFindings(effusion_side="left", effusion_size="small", pneumothorax_side="left",
                            pneumothorax_extent="large")
    assert clash.conflicts() and not LEFT_LARGE.conflicts()
    assert PhantomFindings(ctr=0.6).cardiomegaly and not PhantomFindings(ctr=0.45).cardiomegaly
    with pytest.raises(ConfigError, match="probability"):
        PhantomConfig(effusion_prob=1.5)


def _reports(findings: PhantomFindings, wording: str, n: int = 60, cfg: PhantomConfig | None = None) -> list[str]:
    rng = np.random.default_rng(0)
    return [report_for(findings, rng, wording=wording, cfg=cfg) for _ in range(n)]


def test_report_wording_variety_and_laterality() -> None:
    texts = _reports(LEFT_LARGE, "train")
    assert len(set(texts)) >= 5
    joined = " ".join(texts)
    assert "pleural effusion" in joined and "pleural fluid" in joined and "left-sided" in joined
    assert all("left" in t.lower() and "right" not in t.lower() for t in texts)
    cons = _reports(PhantomFindings(consolidation_lobe="right_lower"), "train")
    assert all("right lower lobe" in t.lower() for t in cons)
    big = _reports(PhantomFindings(ctr=0.62), "train")
    assert all(re.search(r"cardiomegaly|enlarge", t, re.IGNORECASE) for t in big)


def test_report_negations_and_normal_studies() -> None:
    normal = PhantomFindings(ctr=0.45)
    texts = _reports(normal, "train", cfg=PhantomConfig(negation_prob=1.0))
    joined = " ".join(texts)
    for sentence in ("No acute cardiopulmonary process.", "No pleural effusion or pneumothorax.",
                     "No focal consolidation.", "Heart size is normal."):
        assert sentence in joined
    bare = _reports(LEFT_LARGE, "train", cfg=PhantomConfig(negation_prob=0.0))
    assert not any(re.search(r"\bno\b", t, re.IGNORECASE) for t in bare)
    negating = _reports(LEFT_LARGE, "train", cfg=PhantomConfig(negation_prob=1.0))
    assert all("pneumothorax" in negated_findings(t) and "effusion" not in negated_findings(t) for t in negating)


def _all_sentences(wording: str) -> set[str]:
    """Every sentence a wording set can produce (all sides, sizes and lobes filled in)."""
    out = set()
    for template in itertools.chain.from_iterable(TEMPLATES[wording].values()):
        for side, size, lobe in itertools.product(("right", "left"), ("small", "moderate", "large"),
                                                  ("right upper", "left lower")):
            sided = f"{side}-sided"
            out.add(template.format(side=side, sided=sided, size=size, lobe=lobe, Size=size.capitalize(),
                                    Sided=sided.capitalize(), Lobe=lobe.capitalize()))
    return out


#: Words of the held-out set that no training template may use (the benchmark's new vocabulary).
HELDOUT_ONLY_WORDS = ("hemithorax", "pleural space", "apex", "patchy", "opacity", "unremarkable", "costophrenic",
                      "sharp", "evidence", "collection", "in size", "present", "increased", "findings")


def test_heldout_wordings_never_appear_in_training_reports() -> None:
    train, heldout = _all_sentences("train"), _all_sentences("heldout")
    assert not train & heldout
    heldout_text = " ".join(heldout).lower()
    for word in HELDOUT_ONLY_WORDS:
        assert word in heldout_text and not any(word in s.lower() for s in train), word
    rng = np.random.default_rng(5)
    for _ in range(300):
        text = report_for(sample_findings(rng), rng, wording="train")
        assert not any(s in text for s in heldout)
    with pytest.raises(ConfigError, match="wording"):
        report_for(LEFT_LARGE, rng, wording="test")


def test_dev_wordings_are_a_third_disjoint_set() -> None:
    train, heldout, dev = _all_sentences("train"), _all_sentences("heldout"), _all_sentences("dev")
    assert dev and not dev & train and not dev & heldout
    assert not any(word in s.lower() for s in dev for word in HELDOUT_ONLY_WORDS)  # no held-out vocabulary either
    rng = np.random.default_rng(7)
    for _ in range(100):
        text = report_for(sample_findings(rng), rng, wording="dev")
        assert not any(s in text for s in train | heldout)


def test_benchmark_prompts_fixed_heldout_and_covering() -> None:
    prompts = benchmark_prompts()
    assert prompts == benchmark_prompts() and 64 <= len(prompts) <= 128
    train = _all_sentences("train")
    assert not any(s in text for text, _ in prompts for s in train)
    truths = [f for _, f in prompts]
    for key, values in (("effusion_side", {"right", "left", "bilateral"}), ("effusion_size", {"small", "moderate", "large"}),
                        ("pneumothorax_side", {"right", "left"}), ("consolidation_lobe", {"right_upper", "left_lower"})):
        assert values <= {getattr(f, key) for f in truths}
    assert any(f.cardiomegaly for f in truths) and any(f.is_normal for f in truths)
    assert all(not f.conflicts() for f in truths)


def test_benchmark_prompts_in_training_wording_keep_the_findings() -> None:
    heldout, train = benchmark_prompts(), benchmark_prompts(wording="train")
    assert [f for _, f in train] == [f for _, f in heldout]  # same findings, other words
    heldout_sentences = _all_sentences("heldout")
    assert not any(s in text for text, _ in train for s in heldout_sentences)
    with pytest.raises(ConfigError, match="wording"):
        benchmark_prompts(wording="test")


def test_write_phantom_set(tmp_path: Path) -> None:
    csv = write_phantom_set(6, 32, tmp_path / "set", seed=11, progress=False)
    df = pd.read_csv(csv)
    assert len(df) == 6 and len(list((tmp_path / "set" / "images").glob("*.png"))) == 6
    for col in ("image_path", "patient_id", "report", "prompt", "effusion_side", "ctr", "consolidation_lobe"):
        assert col in df.columns
    first = read_image(csv.parent / df.loc[0, "image_path"])
    assert first.shape == (32, 32)
    manifest, _ = build_manifest("csv", csv, DataConfig())  # the project's generic CSV reader
    assert len(manifest) == 6 and set(manifest["patient_id"]) == set(df["patient_id"])
    again = pd.read_csv(write_phantom_set(6, 32, tmp_path / "again", seed=11, progress=False))
    pd.testing.assert_frame_equal(df, again)


def test_cli_phantom(tmp_path: Path, capsys) -> None:
    from cxrgen.cli import main

    assert main(["phantom", "--n", "3", "--size", "32", "--seed", "5", "--out", str(tmp_path / "p")]) == 0
    assert "wrote 3 phantoms" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "p" / "phantoms.csv")) == 3


def test_max_findings_limits_each_study() -> None:
    rng = np.random.default_rng(3)
    drawn = [sample_findings(rng, PhantomConfig(max_findings=1)) for _ in range(300)]
    assert max(f.n_findings for f in drawn) == 1 and any(f.is_normal for f in drawn)
    free = [sample_findings(rng) for _ in range(300)]
    assert max(f.n_findings for f in free) > 1  # without the limit studies combine findings
    with pytest.raises(ConfigError, match="max_findings"):
        PhantomConfig(max_findings=0)


def test_present_lists_the_shown_findings() -> None:
    assert PhantomFindings().present == frozenset()
    both = PhantomFindings(effusion_side="left", effusion_size="small", consolidation_lobe="right_upper", ctr=0.6)
    assert both.present == {"effusion", "consolidation", "cardiomegaly"} and both.n_findings == 3


def test_benchmark_prompts_restricted_to_some_findings() -> None:
    full = benchmark_prompts()
    effusion = benchmark_prompts(findings=("effusion",))
    assert effusion and all(f.present <= {"effusion"} for _, f in effusion)
    assert {f.effusion_side for _, f in effusion} == {"none", "right", "left", "bilateral"}
    assert set(effusion) < set(full)  # the same prompts (same wording draws), fewer of them
    with pytest.raises(ConfigError, match="findings"):
        benchmark_prompts(findings=("fracture",))
