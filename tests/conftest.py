"""Shared test fixtures: the shared data folder (skipped with a reason outside CI when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

try:  # rouge-score imports absl, whose log handler keeps the sys.stderr of its import time: a test's
    import absl.logging  # captured stream, closed after that test, which a later test's logging then hits
except ImportError:
    pass
else:
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


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


@pytest.fixture(scope="session")
def covid_run(shared_data: Path, tmp_path_factory) -> dict:
    """The engine through the CLI on the shared covid set: prepare -> cache -> train a tiny model 200 steps.

    Shared by the engine and evaluation tests (trained once per session, about 15 s).
    """
    import yaml
    from train_helpers import covid_tiny_config

    from cxrgen.cli import main

    root = tmp_path_factory.mktemp("covid_run")
    manifest = root / "covid" / "manifest.parquet"
    assert main(["prepare", "covid", str(shared_data / "covid-cxr-256"), "--out", str(manifest.parent),
                 "--set", "views=[PA, AP, AP SUPINE]"]) == 0
    steps = 200
    config = covid_tiny_config(root, manifest, steps, cache_dir=str(root / "cache"), checkpoint_every=steps // 2)
    config_path = root / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["cache", str(config_path)]) == 0
    assert main(["train", str(config_path)]) == 0
    return {"root": root, "config": config_path, "out": root / "run", "model": root / "run" / "model",
            "manifest": manifest, "steps": steps}
