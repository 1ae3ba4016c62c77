"""Latent (+ frozen text-embedding) cache: encode training rows once, train many steps from it.

>>> cache_dir = build_cache(cfg)                       # or `cxrgen cache CONFIG --out DIR`
>>> check_cache(cfg, cache_dir, codec, text_encoder)  # StaleCacheError when made from other parts
>>> item = CachedDataset(cache_dir)[0]                 # latent_mean, latent_std, prompt, index (+ context, mask)
"""

from cxrgen.cache.build import (
    build_cache,
    cache_matches,
    cache_mismatches,
    check_cache,
    load_cache_parts,
    run_cache,
)
from cxrgen.cache.dataset import CachedDataset
from cxrgen.cache.fingerprint import StaleCacheError, cache_fingerprint
from cxrgen.cache.store import INDEX_NAME, NULL_NAME, read_index, shard_name

__all__ = [
    "INDEX_NAME",
    "NULL_NAME",
    "CachedDataset",
    "StaleCacheError",
    "build_cache",
    "cache_fingerprint",
    "cache_matches",
    "cache_mismatches",
    "check_cache",
    "load_cache_parts",
    "read_index",
    "run_cache",
    "shard_name",
]
