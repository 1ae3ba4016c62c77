"""On-disk layout of the cache: ``index.json``, ``shard-NNNNN.safetensors`` files, ``null.safetensors``.

A shard holds up to ``shard_size`` consecutive rows as stacked tensors: ``latent_mean`` and
``latent_std`` (n, C, h, w) and, for a frozen text encoder, ``context`` (n, L, D) and ``mask``
(n, L) bool. ``null.safetensors`` holds the null-prompt ``context`` (L, D) and ``mask`` (L,).
Every file is written to a temporary name and renamed, so a killed run never leaves half a shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cxrgen.errors import DataError

#: Name of the index file (rows, shards, prompts, image paths, fingerprint).
INDEX_NAME = "index.json"
#: The null-prompt embedding, stored once for classifier-free guidance dropout.
NULL_NAME = "null.safetensors"
#: Shard file names: shard-00000.safetensors, shard-00001.safetensors, ...
SHARD_PATTERN = "shard-{:05d}.safetensors"
SHARD_GLOB = "shard-*.safetensors"
#: Marks an index as written by this module; bumped when the layout changes.
CACHE_FORMAT, CACHE_VERSION = "cxrgen-latent-cache", 1
#: Tensor names inside a shard.
LATENT_KEYS = ("latent_mean", "latent_std")
TEXT_KEYS = ("context", "mask")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return SHARD_PATTERN.format(k)


def shard_bounds(rows: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of the shards: consecutive blocks of ``shard_size``, the last shorter."""
    return [(start, min(start + shard_size, rows)) for start in range(0, rows, shard_size)]


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` as safetensors through a temporary file + rename; returns the file size in bytes."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path.stat().st_size


def write_index(index: dict[str, Any], cache_dir: Path) -> Path:
    """Write ``index.json`` atomically (temporary file + rename)."""
    path = cache_dir / INDEX_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_index(cache_dir: str | Path) -> dict[str, Any] | None:
    """The cache's index, or None when ``cache_dir`` holds none; a foreign or broken index is a DataError."""
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read cache index {path} ({exc}); rebuild it with `cxrgen cache CONFIG`") from exc
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a cxrgen cache index; give a folder written by `cxrgen cache`")
    if index.get("version") != CACHE_VERSION:
        raise DataError(
            f"cache {path.parent} has layout version {index.get('version')}, this cxrgen reads version "
            f"{CACHE_VERSION}: rebuild it with `cxrgen cache CONFIG`"
        )
    return index


def remove_cache_files(cache_dir: Path) -> None:
    """Delete the files a cache consists of (index, shards, null embedding, leftovers), nothing else."""
    singles = [cache_dir / name for name in (NULL_NAME, INDEX_NAME)]
    for path in [*cache_dir.glob(SHARD_GLOB), *cache_dir.glob(SHARD_GLOB + ".tmp"), *singles,
                 *(p.with_name(p.name + ".tmp") for p in singles)]:
        if path.is_file():
            path.unlink()
