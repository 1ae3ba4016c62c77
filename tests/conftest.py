"""Shared test fixtures: the shared data folder (skipped with a reason outside CI when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the shared data lives: $CXRGEN_SHARED_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("CXRGEN_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; in CI its absence is a failure, elsewhere a skip with the reason."""
    root = shared_data_root()
    if not root.is_dir():
        reason = (
            f"shared data not found at {root}: set CXRGEN_SHARED_DATA or place the data at ../shared/data"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def iu_archive(shared_data: Path) -> Path:
    """The IU X-ray report archive (text only)."""
    return shared_data / "iu-xray-reports" / "NLMCXR_reports.tgz"
