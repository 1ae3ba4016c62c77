"""Patient-level splits: linking by patient and image hash, seeded draws, source splits, leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrgen.config import SplitConfig
from cxrgen.data.images import file_sha1
from cxrgen.data.manifest import SPLITS
from cxrgen.data.splits import (
    assign_splits,
    check_split_leaks,
    duplicate_groups,
    link_groups,
    resolve_split_leaks,
)
from cxrgen.errors import DataError, MissingColumnsError

SHARE_TOLERANCE = 0.01  # by rows, with ~3,000 rows in groups of 1-5
N_SHARED_PAIRS = 20  # patient i and patient n-1-i list one identical image file


def _synthetic(n_patients: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-5 images each; the first image of patient i is also listed under n-1-i."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n_patients)
    patients = np.repeat([f"p{i:04d}" for i in range(n_patients)], counts)
    df = pd.DataFrame({"patient_id": patients, "image_sha1": [f"h{i}" for i in range(len(patients))]})
    firsts = df.groupby("patient_id", sort=True).head(1).index
    for i in range(N_SHARED_PAIRS):
        df.loc[firsts[n_patients - 1 - i], "image_sha1"] = df.loc[firsts[i], "image_sha1"]
    return df


def _shared_pairs_together(df: pd.DataFrame, split: pd.Series) -> bool:
    by_patient = split.groupby(df["patient_id"]).first().sort_index().to_numpy()
    return all(by_patient[i] == by_patient[-1 - i] for i in range(N_SHARED_PAIRS))


def _patients_in_one_split(df: pd.DataFrame, split: pd.Series) -> bool:
    return bool((split.groupby(df["patient_id"]).nunique() == 1).all())


# --------------------------------------------------------------------------------------------
# Linking
# --------------------------------------------------------------------------------------------
def test_link_groups_joins_patients_through_shared_images() -> None:
    df = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c", "", None, "d", "e"],
        "image_sha1": ["h1", "h2", "h2", "h3", "h3", "h9", np.nan, ""],
    })
    groups = link_groups(df)
    assert groups.tolist() == [0, 0, 0, 1, 1, 2, 3, 4]  # a-b via h2; c-row4 via h3; empties skipped


def test_link_groups_ignores_empty_values_and_keeps_columns_apart() -> None:
    df = pd.DataFrame({"patient_id": ["", "", "x", np.nan], "image_sha1": ["", "", "", "x"]})
    # empty strings and NaN link nothing; the same text "x" in different columns is no link
    assert len(set(link_groups(df).tolist())) == 4


def test_link_groups_needs_a_link_column_and_warns_on_absent_ones(caplog) -> None:
    with pytest.raises(MissingColumnsError, match="patient_id"):
        link_groups(pd.DataFrame({"other": [1, 2]}))
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.splits"):
        groups = link_groups(pd.DataFrame({"patient_id": ["a", "a", "b"]}))
    assert groups.tolist() == [0, 0, 1]
    assert "image_sha1" in caplog.text


def test_duplicate_groups_lists_identical_images() -> None:
    df = pd.DataFrame({"image_sha1": ["h1", "h2", "h1", "", np.nan, "", "h2", "h3", "h1"]})
    assert duplicate_groups(df) == [[0, 2, 8], [1, 6]]
    with pytest.raises(MissingColumnsError, match="file_sha1"):
        duplicate_groups(df, column="nope")


# --------------------------------------------------------------------------------------------
# Drawing splits
# --------------------------------------------------------------------------------------------
def test_draw_is_deterministic_and_seed_dependent() -> None:
    df = _synthetic()
    cfg = SplitConfig(seed=3)
    first = assign_splits(df, cfg)
    pd.testing.assert_series_equal(first, assign_splits(df, cfg))
    assert (first != assign_splits(df, SplitConfig(seed=4))).mean() > 0.1


def test_draw_does_not_depend_on_row_order() -> None:
    df = _synthetic()
    cfg = SplitConfig(seed=5)
    split = assign_splits(df, cfg)
    shuffled = df.sample(frac=1.0, random_state=0)
    again = assign_splits(shuffled, cfg)
    pd.testing.assert_series_equal(again.sort_index(), split, check_names=False)


def test_draw_keeps_patients_and_duplicates_together_with_target_shares() -> None:
    df = _synthetic()
    cfg = SplitConfig(train=0.7, validate=0.2, test=0.1, seed=1)
    split = assign_splits(df, cfg)
    assert split.index.equals(df.index) and split.name == "split"
    assert set(split) == set(SPLITS)
    assert _patients_in_one_split(df, split)
    assert _shared_pairs_together(df, split)  # joined only through a shared image hash
    by_patient_only = assign_splits(df, cfg, link_columns=("patient_id",))
    assert not _shared_pairs_together(df, by_patient_only)  # the check above can fail
    shares = split.value_counts(normalize=True)
    for name, target in zip(SPLITS, (cfg.train, cfg.validate, cfg.test), strict=True):
        assert abs(shares[name] - target) < SHARE_TOLERANCE
    assert check_split_leaks(df, split) == 0


def test_zero_share_split_stays_empty_and_tiny_data_warns(caplog) -> None:
    df = _synthetic(200)
    split = assign_splits(df, SplitConfig(train=0.9, validate=0.1, test=0.0, keep_source_split=False))
    assert "test" not in set(split)
    tiny = pd.DataFrame({"patient_id": ["a", "b"]})
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.splits"):
        assign_splits(tiny, SplitConfig(), link_columns=("patient_id",))
    assert "got no rows" in caplog.text


# --------------------------------------------------------------------------------------------
# Source splits and leaks
# --------------------------------------------------------------------------------------------
def test_complete_source_split_is_kept() -> None:
    df = _synthetic(300)
    source = assign_splits(df, SplitConfig(seed=9))
    df["split"] = source
    kept = assign_splits(df, SplitConfig(seed=0))  # another seed: the source must win
    pd.testing.assert_series_equal(kept, source)
    redrawn = assign_splits(df, SplitConfig(seed=0, keep_source_split=False))
    assert (redrawn != source).any()


def test_leaking_source_split_moves_whole_groups_to_majority(caplog) -> None:
    df = pd.DataFrame({
        "patient_id": ["a", "a", "a", "b", "b", "c", "d"],
        "image_sha1": ["1", "2", "3", "4", "5", "6", "4"],  # d shares an image with b
        "split": ["train", "train", "test", "validate", "test", "test", "validate"],
    })
    assert check_split_leaks(df, df["split"]) == 2
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.splits"):
        split = assign_splits(df, SplitConfig())
    assert split.tolist() == ["train"] * 3 + ["validate"] * 2 + ["test", "validate"]
    assert "2 linked group(s)" in caplog.text
    assert check_split_leaks(df, split) == 0


def test_resolve_split_leaks_breaks_ties_by_split_order() -> None:
    split = pd.Series(["test", "validate", "test", "train"], index=[10, 11, 12, 13])
    fixed, moved = resolve_split_leaks(split, np.array([5, 5, 7, 7]))
    assert moved == 2
    assert fixed.tolist() == ["validate", "validate", "train", "train"]
    assert fixed.index.tolist() == [10, 11, 12, 13]


def test_incomplete_or_bad_source_split(caplog) -> None:
    df = _synthetic(100)
    df["split"] = "train"
    df.loc[df.index[:5], "split"] = ""
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.splits"):
        split = assign_splits(df, SplitConfig())
    assert "empty for 5" in caplog.text and set(split) == set(SPLITS)  # drawn, not kept
    df["split"] = "val"
    with pytest.raises(DataError, match="val"):
        assign_splits(df, SplitConfig())


# --------------------------------------------------------------------------------------------
# The real covid set: five files listed under two patient ids
# --------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_covid_duplicates_are_found_and_never_split(shared_data: Path) -> None:
    root = shared_data / "covid-cxr-256"
    df = pd.read_csv(root / "metadata.csv", dtype={"patient_id": str})
    hashes = {path: file_sha1(root / path) for path in df["image"].unique()}
    df["image_sha1"] = df["image"].map(hashes)
    dups = duplicate_groups(df)
    cross_patient = [g for g in dups if df.loc[g, "patient_id"].nunique() > 1]
    assert len(cross_patient) == 5
    split = assign_splits(df, SplitConfig(seed=0))
    assert check_split_leaks(df, split) == 0
    for rows in dups:
        patients = df.loc[rows, "patient_id"].unique()
        assert split[df.patient_id.isin(patients)].nunique() == 1
    # linking by patient alone would let the copies leak for some seed
    leaks = [check_split_leaks(df, assign_splits(df, SplitConfig(seed=s), ("patient_id",)), ("patient_id", "image_sha1"))
             for s in range(5)]
    assert max(leaks) > 0
