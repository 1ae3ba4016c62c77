"""Output folders: prove they are writable before any work, and clear what a killed run left behind.

Below every command module (it imports only the error types), so training, generation and
evaluation share one check and one rule for stale temporary files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

#: A temporary file older than this was left by a killed process: writing one image or file takes
#: well under a second, and a live writer renames its temp file as soon as it is complete.
STALE_TMP_AGE_S = 60.0


def check_writable(out_dir: str | Path, flag: str = "--out") -> Path:
    """Create ``out_dir`` and prove a file can be written there (ConfigError otherwise)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to output directory {out_dir} ({type(exc).__name__}: {exc}); "
                          f"give a writable {flag} directory") from exc
    return out_dir


def remove_stale_temp_files(folder: str | Path, pattern: str = ".*.tmp",
                            max_age_s: float = STALE_TMP_AGE_S) -> list[Path]:
    """Delete temp files matching ``pattern`` in ``folder`` older than ``max_age_s``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for path in folder.glob(pattern):
        try:
            if path.is_file() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process cleaned it first
            continue
    if removed:
        log.info("removed %d stale temporary file(s) of a killed run from %s", len(removed), folder)
    return removed


def run_artefacts(out_dir: str | Path, names: Iterable[str]) -> list[Path]:
    """The entries among ``names`` that exist in ``out_dir`` (what a previous run left there)."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in names if (out_dir / name).exists()]


def remove_paths(paths: Iterable[Path]) -> None:
    """Delete files and folders (``--overwrite`` of a previous run's outputs)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
