"""Shared test fixtures: the shared data folder (skipped with a reason outside CI when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread; on a 2-core CI machine more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
