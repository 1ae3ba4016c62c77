"""Patient-level splits: rows linked by patient or identical image never cross train/validate/test.

Rows that share any value in any link column (a patient id, an image hash) form one group
(union-find as connected components of a row-value graph); whole groups are then assigned to a
split, so a patient, or an image the source lists under two patients, cannot leak into test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxrgen.config import SplitConfig
from cxrgen.data.manifest import SPLITS
from cxrgen.errors import DataError, MissingColumnsError

log = logging.getLogger(__name__)

LINK_COLUMNS: tuple[str, ...] = ("patient_id", "image_sha1")
SPLIT_COLUMN = "split"


def _link_values(df: pd.DataFrame, column: str) -> pd.Series:
    """The column as stripped strings, with empty and NaN values as NaN."""
    values = df[column].astype("string").str.strip()
    return values.mask(values == "")


def _present_columns(df: pd.DataFrame, link_columns: Sequence[str]) -> list[str]:
    """The link columns that ``df`` has; warns about absent ones, fails when none is present."""
    present = [c for c in link_columns if c in df.columns]
    absent = [c for c in link_columns if c not in df.columns]
    if not present:
        raise MissingColumnsError(
            f"none of the link columns {list(link_columns)} is in the table; add a patient_id "
            "column (and image_sha1 from file_sha1) before splitting"
        )
    if absent:
        log.warning(
            "link column(s) %s absent: rows are not linked by them; pass link_columns=%s to "
            "silence this", absent, tuple(present),
        )
    return present


def link_groups(df: pd.DataFrame, link_columns: Sequence[str] = LINK_COLUMNS) -> np.ndarray:
    """Int group id per row (positional): rows sharing any non-empty value of any link column."""
    n_rows = len(df)
    rows, nodes = [np.arange(n_rows)], [np.arange(n_rows)]  # each row is linked to itself
    n_nodes = n_rows
    for column in _present_columns(df, link_columns):
        codes, uniques = pd.factorize(_link_values(df, column), use_na_sentinel=True)
        has = codes >= 0
        rows.append(np.flatnonzero(has))
        nodes.append(n_nodes + codes[has])  # one node per distinct value of this column
        n_nodes += len(uniques)
    row_idx, node_idx = np.concatenate(rows), np.concatenate(nodes)
    graph = coo_matrix((np.ones(len(row_idx), dtype=np.int8), (row_idx, node_idx)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(graph, directed=False)
    groups, _ = pd.factorize(labels[:n_rows])  # renumber 0.. in order of first row
    return groups.astype(np.int64)


def duplicate_groups(df: pd.DataFrame, column: str = "image_sha1") -> list[list[int]]:
    """Row positions of identical images (same non-empty ``column`` value), groups of two or more."""
    if column not in df.columns:
        raise MissingColumnsError(f"no column {column!r}; hash the image files with file_sha1 first")
    codes, _ = pd.factorize(_link_values(df, column), use_na_sentinel=True)
    positions = pd.Series(np.arange(len(df)))[codes >= 0].groupby(codes[codes >= 0])
    return [sorted(g.tolist()) for _, g in positions if len(g) > 1]


def check_split_leaks(
    df: pd.DataFrame, split: pd.Series | Sequence[str], link_columns: Sequence[str] = LINK_COLUMNS
) -> int:
    """How many linked groups have rows in more than one split (0 means no leak)."""
    groups = link_groups(df, link_columns)
    return int((pd.Series(np.asarray(split)).groupby(groups).nunique() > 1).sum())


def resolve_split_leaks(split: pd.Series, groups: np.ndarray) -> tuple[pd.Series, int]:
    """Move every group spanning splits to the split holding most of its rows (ties: SPLITS order).

    Returns the repaired split and the number of groups moved.
    """
    values = np.asarray(split, dtype=object)
    groups, _ = pd.factorize(np.asarray(groups))  # contiguous 0..G-1, the crosstab's row order
    counts = pd.crosstab(groups, values)  # (groups, split names): rows per group and split
    names = [s for s in SPLITS if s in counts.columns] + sorted(set(counts.columns) - set(SPLITS))
    counts = counts[names]  # idxmax keeps the first maximum: ties go to the earlier split
    leaking = ((counts > 0).sum(axis=1) > 1).to_numpy()
    if not leaking.any():
        return split.copy(), 0
    target = counts.idxmax(axis=1).to_numpy(dtype=object)
    fixed = np.where(leaking[groups], target[groups], values)
    return pd.Series(fixed, index=split.index, name=split.name), int(leaking.sum())


def assign_splits(
    df: pd.DataFrame, cfg: SplitConfig, link_columns: Sequence[str] = LINK_COLUMNS
) -> pd.Series:
    """A "train"/"validate"/"test" Series aligned with ``df``: whole linked groups per split.

    With ``cfg.keep_source_split`` and a complete ``split`` column, the source split is kept and
    only leaking groups are moved (logged); otherwise groups are drawn from ``cfg.seed``.
    """
    groups = link_groups(df, link_columns)
    source = _complete_source_split(df) if cfg.keep_source_split else None
    if source is not None:
        split, moved = resolve_split_leaks(source, groups)
        if moved:
            log.warning(
                "source split puts %d linked group(s) (same patient or identical image) in more "
                "than one split; moved each whole group to the split holding most of its rows", moved,
            )
    else:
        split = _draw_splits(df, groups, cfg, link_columns)
    _warn_empty_splits(split, cfg)
    return pd.Series(split.to_numpy(dtype=object), index=df.index, name=SPLIT_COLUMN)


def _complete_source_split(df: pd.DataFrame) -> pd.Series | None:
    """The df's own split column when every row has one (checked against SPLITS), else None."""
    if SPLIT_COLUMN not in df.columns:
        return None
    source = _link_values(df, SPLIT_COLUMN)
    empty = int(source.isna().sum())
    if empty:
        if empty < len(df):
            log.warning(
                "source split is empty for %d of %d rows; ignoring it and drawing a split from "
                "split.seed", empty, len(df),
            )
        return None
    bad = sorted(set(source.unique()) - set(SPLITS))
    if bad:
        raise DataError(
            f"split column has values {bad}; allowed: {list(SPLITS)}: fix the reader, or set "
            "split.keep_source_split=false to draw a new split"
        )
    return source.astype(object)


def _draw_splits(
    df: pd.DataFrame, groups: np.ndarray, cfg: SplitConfig, link_columns: Sequence[str]
) -> pd.Series:
    """Shuffle groups with a seeded Generator and fill the splits in order until each share is met.

    Groups are first sorted by their smallest link values, so the draw does not depend on row order.
    """
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    keys = pd.DataFrame(
        {c: _link_values(df, c).groupby(groups).min() for c in link_columns if c in df.columns}
    ).reindex(range(n_groups))
    canonical = keys.sort_values(list(keys.columns), na_position="last", kind="stable").index.to_numpy()
    order = canonical[np.random.default_rng(cfg.seed).permutation(n_groups)]
    sizes = np.bincount(groups, minlength=n_groups)[order].astype(np.float64)
    # a group goes where the middle of its rows falls on the cumulative share line
    middle = (np.cumsum(sizes) - sizes / 2) / max(len(groups), 1)
    bounds = np.cumsum([cfg.train, cfg.validate])
    group_split = np.empty(n_groups, dtype=object)
    group_split[order] = np.asarray(SPLITS, dtype=object)[np.searchsorted(bounds, middle, side="right")]
    return pd.Series(group_split[groups] if len(groups) else [], dtype=object)


def _warn_empty_splits(split: pd.Series, cfg: SplitConfig) -> None:
    """Warn when a split with a positive share got no rows (small data or a one-split source)."""
    shares = dict(zip(SPLITS, (cfg.train, cfg.validate, cfg.test), strict=True))
    present = set(split.unique())
    empty = [name for name, share in shares.items() if share > 0 and name not in present]
    if empty and len(split):
        log.warning(
            "split(s) %s got no rows (too few patients for the shares, or a source split without "
            "them: set split.keep_source_split=false to draw one from split.seed)", empty,
        )
