"""CachedDataset: rows of a latent cache read lazily, one shard file open at a time per LRU slot."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from cxrgen.cache.store import LATENT_KEYS, NULL_NAME, TEXT_KEYS, read_index
from cxrgen.errors import DataError

#: Shard files kept open at once by default (readers with many workers each hold their own).
DEFAULT_OPEN_SHARDS = 4


class CachedDataset(Dataset):
    """Items ``{"latent_mean", "latent_std": (C, h, w), "prompt", "index"}`` (+ ``context`` (L, D), ``mask`` (L,)).

    Tensors come back as float32 whatever the storage dtype; ``mask`` is bool. Sample training
    latents with ``codec.scale_latents(sample_posterior(mean, std, generator))``.
    """

    def __init__(self, cache_dir: str | Path, max_open_shards: int = DEFAULT_OPEN_SHARDS) -> None:
        self.cache_dir = Path(cache_dir)
        index = read_index(self.cache_dir)
        if index is None:
            raise DataError(f"{self.cache_dir} holds no latent cache; build one with `cxrgen cache CONFIG`")
        if not index.get("complete"):
            raise DataError(f"the cache in {self.cache_dir} is incomplete; run `cxrgen cache CONFIG` again to finish it")
        if max_open_shards < 1:
            raise DataError(f"max_open_shards={max_open_shards}: keep at least one shard open")
        self.index = index
        self.prompts: list[str] = index["prompts"]
        self.image_paths: list[str] = index["image_paths"]
        self.shard_size: int = index["shard_size"]
        self.latent_shape = tuple(index["latent_shape"])
        self.context_shape = None if index["context_shape"] is None else tuple(index["context_shape"])
        self.fingerprint: dict[str, Any] = index["fingerprint"]
        self._files = [self.cache_dir / s["file"] for s in index["shards"]]
        self.max_open_shards = max_open_shards
        self._open: OrderedDict[int, Any] = OrderedDict()

    @property
    def has_text(self) -> bool:
        """Whether the cache holds text embeddings (the text encoder was frozen)."""
        return self.context_shape is not None

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a cache of {n} rows")
        i = i % n
        handle, offset = self._shard(i // self.shard_size), i % self.shard_size
        keys = LATENT_KEYS + (TEXT_KEYS if self.has_text else ())
        item: dict[str, Any] = {}
        for key in keys:
            value = handle.get_slice(key)[offset : offset + 1][0]  # drop the row axis: (C, h, w) / (L, D) / (L,)
            item[key] = value if key == "mask" else value.float()
        item["prompt"], item["index"] = self.prompts[i], i
        return item

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The null-prompt context (L, D) float32 and mask (L,) bool, or None without text embeddings."""
        if not self.has_text:
            return None
        with safe_open(str(self.cache_dir / NULL_NAME), framework="pt") as handle:
            return handle.get_tensor("context").float(), handle.get_tensor("mask")

    def _shard(self, k: int) -> Any:
        """Open handle of shard ``k``; least recently used handles are closed past ``max_open_shards``."""
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self._files[k]
        if not path.is_file():
            raise DataError(f"cache shard {path} is missing; rebuild with `cxrgen cache CONFIG`")
        self._open[k] = safe_open(str(path), framework="pt")
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return self._open[k]

    def __getstate__(self) -> dict[str, Any]:
        """Open file handles do not travel to DataLoader workers; each worker opens its own."""
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state
