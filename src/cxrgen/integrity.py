"""Integrity of a model folder's weights: a SHA-256 record written on save and checked on load.

``save_pretrained`` writes ``weights_sha256.json`` ({"algorithm": "sha256", "files": {relative path:
hex digest}}) over every ``*.safetensors`` file in the folder; ``from_pretrained`` recomputes the
digests and refuses a file that changed (bit rot, a partial copy, an edit) with an error naming it.
Folders written before the record existed still load, with a warning. A weights file that cannot be
parsed at all (truncated, not safetensors) is named by :func:`check_weights_readable`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from safetensors import safe_open

from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

RECORD_NAME = "weights_sha256.json"
WEIGHTS_GLOB = "*.safetensors"
_CHUNK = 1 << 20


class WeightsIntegrityError(ConfigError):
    """A weights file of a model folder is missing, truncated, corrupt or not the one recorded."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(WEIGHTS_GLOB) if p.is_file())


def record_weights(folder: str | Path) -> Path:
    """Write ``RECORD_NAME`` with the SHA-256 of every weights file under ``folder``; returns its path."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in _weights_files(folder)}
    path = folder / RECORD_NAME
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2) + "\n", encoding="utf-8")
    return path


def verify_weights(folder: str | Path) -> list[str]:
    """Check every recorded weights file against its SHA-256; returns the files checked ([] without a record).

    Raises WeightsIntegrityError naming the first file that is missing or differs.
    """
    folder = Path(folder)
    path = folder / RECORD_NAME
    if not path.is_file():
        log.warning("%s has no %s (written by older cxrgen): its weights are loaded unverified; re-save the "
                    "model to add one", folder, RECORD_NAME)
        return []
    try:
        files = dict(json.loads(path.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsIntegrityError(f"{path} is not a valid weights record ({exc}): restore it from the original "
                                    "model folder or re-save the model") from None
    for name, expected in files.items():
        weights = folder / name
        if not weights.is_file():
            raise WeightsIntegrityError(f"{weights} is missing (listed in {RECORD_NAME}): copy the whole model folder")
        if file_sha256(weights) != expected:
            raise WeightsIntegrityError(
                f"{weights} does not match the sha256 recorded in {path} (corrupt, truncated or changed): "
                "copy the model folder again, or re-save the model if the change was meant")
    return list(files)


def check_weights_readable(folder: str | Path) -> None:
    """Raise WeightsIntegrityError naming the first ``*.safetensors`` under ``folder`` that cannot be read."""
    for weights in _weights_files(Path(folder)):
        try:
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
            raise WeightsIntegrityError(
                f"{weights} is corrupt or truncated ({type(exc).__name__}: {exc}): copy the model folder again"
            ) from None
