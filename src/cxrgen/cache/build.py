"""`cxrgen cache`: encode the training rows once, store posterior (mean, std) and frozen text embeddings.

Latents stay unscaled (LatentCodec.encode_distribution), so training still samples
z = mean + std * eps and then applies the codec's scale and shift (LDM, Rombach et al. 2022,
sec. 4.3.2); U-ViT (Bao et al. 2023) precomputes latents and text embeddings the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrgen.autoencoder import LatentCodec
from cxrgen.cache.fingerprint import (
    REBUILD_HINT,
    StaleCacheError,
    cache_fingerprint,
    fingerprint_mismatches,
)
from cxrgen.cache.store import (
    CACHE_FORMAT,
    CACHE_VERSION,
    DTYPES,
    NULL_NAME,
    read_index,
    remove_cache_files,
    shard_bounds,
    shard_name,
    write_index,
    write_tensors,
)
from cxrgen.config import TrainConfig, load_config, save_config, to_dict
from cxrgen.data.dataset import ManifestImageDataset
from cxrgen.errors import ConfigError, DataError
from cxrgen.parts import build_model_parts
from cxrgen.text import TextEncoder

log = logging.getLogger(__name__)

#: The config the cache was built with, saved beside the index for the record.
CACHE_CONFIG_NAME = "cache_config.yaml"


# --------------------------------------------------------------------------------------------
# Inputs: rows and parts
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_cache_parts(
    cfg: TrainConfig, codec: LatentCodec | None = None, text_encoder: TextEncoder | None = None
) -> tuple[LatentCodec, TextEncoder | None]:
    """The given parts, else those the trainer builds from ``cfg.model``, on ``cfg.cache.device``.

    The text encoder is None when it is trainable (nothing to cache). ``autoencoder.pretrained``
    may name a trained codec folder; without it the codec is the trainer's fresh one (seeded by
    ``cfg.seed``), useful for smoke tests only.
    """
    frozen = not cfg.model.text_encoder.trainable
    if codec is None or (frozen and text_encoder is None):
        # the trainer's own construction and seeding, so a fresh codec matches the trainer's
        if codec is None and cfg.model.autoencoder.pretrained is None:
            log.warning("autoencoder.pretrained is not set: caching latents of an untrained autoencoder "
                        "(smoke tests only); set it to a trained codec folder")
        parts = build_model_parts(cfg)
        device = resolve_device(cfg.cache.device)
        codec = parts.autoencoder.to(device) if codec is None else codec
        text_encoder = parts.text_encoder.to(device) if text_encoder is None else text_encoder
    return codec, text_encoder if frozen else None


# --------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------
def cache_mismatches(
    cfg: TrainConfig,
    cache_dir: str | Path,
    codec: LatentCodec | None = None,
    text_encoder: TextEncoder | None = None,
) -> list[str]:
    """Why the cache in ``cache_dir`` cannot serve ``cfg`` with these parts (empty list: it can).

    Parts not given are loaded from ``cfg.model``; pass the trainer's own codec / text encoder.
    """
    index = read_index(cache_dir)
    if index is None:
        return [f"{cache_dir} holds no cache index"]
    if not index.get("complete"):
        return [f"the cache in {cache_dir} is incomplete (an interrupted build): run `cxrgen cache` again"]
    codec, text = load_cache_parts(cfg, codec, text_encoder)
    current = cache_fingerprint(cfg, codec, text)
    return fingerprint_mismatches(index["fingerprint"], current, text is not None)


def cache_matches(
    cfg: TrainConfig,
    cache_dir: str | Path,
    codec: LatentCodec | None = None,
    text_encoder: TextEncoder | None = None,
) -> bool:
    """Whether ``cache_dir`` holds a complete cache made from ``cfg``'s parts, images and manifests."""
    return not cache_mismatches(cfg, cache_dir, codec, text_encoder)


def check_cache(
    cfg: TrainConfig,
    cache_dir: str | Path,
    codec: LatentCodec | None = None,
    text_encoder: TextEncoder | None = None,
) -> None:
    """Raise StaleCacheError naming every difference when the cache cannot serve ``cfg``."""
    problems = cache_mismatches(cfg, cache_dir, codec, text_encoder)
    if problems:
        raise StaleCacheError(
            f"the latent cache in {cache_dir} does not match this training config: " + "; ".join(problems)
            + f". Refusing to train on it: {REBUILD_HINT}, or unset cache_dir to encode on the fly."
        )


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def _pad_text(context: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad context (B, L, D) with zeros and mask (B, L) with False to ``length`` tokens (fixed shard shape)."""
    extra = length - context.shape[1]
    if extra <= 0:
        return context, mask
    context = torch.nn.functional.pad(context, (0, 0, 0, extra))  # (B, length, D)
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)  # (B, length)
    return context, mask


def _stored(tensor: torch.Tensor, dtype: str, what: str) -> torch.Tensor:
    """``tensor`` on the CPU in the storage dtype; values the dtype cannot hold are an error."""
    if not torch.isfinite(tensor).all():
        raise DataError(f"{what} has NaN or infinite values: check the autoencoder / text encoder weights")
    out = tensor.detach().to("cpu", DTYPES[dtype])
    if not torch.isfinite(out).all():
        raise DataError(f"{what} overflows cache.dtype={dtype}: rebuild with --set cache.dtype=float32")
    return out


def _layout(cfg: TrainConfig, codec: LatentCodec, text: TextEncoder | None, rows: int) -> dict[str, Any]:
    """Storage layout: rows, shard size, dtype and the tensor shapes of one row."""
    side = cfg.image.size // codec.downsample_factor
    context = None if text is None else [text.context_length, text.hidden_size]
    return {"rows": rows, "shard_size": cfg.cache.shard_size, "dtype": cfg.cache.dtype,
            "latent_shape": [codec.latent_channels, side, side], "context_shape": context}


def _done_shards(index: dict[str, Any] | None, expected: dict[str, Any], cache_dir: Path) -> list[dict]:
    """Shard records of an earlier build that can be kept: same fingerprint, layout and rows, file intact."""
    if index is None:
        return []
    same = all(index.get(k) == v for k, v in expected.items() if k not in ("shards", "complete"))
    if not same:
        log.warning("cache in %s was made from something else: rebuilding it", cache_dir)
        return []
    return [s for s in index["shards"] if (cache_dir / s["file"]).is_file()
            and (cache_dir / s["file"]).stat().st_size == s["bytes"]]


@torch.no_grad()
def _encode_null(text: TextEncoder, cache_dir: Path, dtype: str) -> None:
    """Store the null-prompt context (L, D) and mask (L,) once."""
    context, mask = _pad_text(*text.encode_null(1), text.context_length)
    write_tensors({"context": _stored(context[0], dtype, "null context"), "mask": mask[0].cpu()},
                  cache_dir / NULL_NAME)


@torch.no_grad()
def _encode_batch(codec: LatentCodec, text: TextEncoder | None, images: torch.Tensor,
                  prompts: list[str]) -> dict[str, torch.Tensor]:
    """Posterior mean/std (B, C, h, w) and, with a text encoder, context (B, L, D) + mask (B, L)."""
    mean, std = codec.encode_distribution(images)
    out = {"latent_mean": mean, "latent_std": std}
    if text is not None:
        out["context"], out["mask"] = _pad_text(*text.encode(prompts), text.context_length)
    return out


def build_cache(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    codec: LatentCodec | None = None,
    text_encoder: TextEncoder | None = None,
) -> Path:
    """Encode the ``cfg.split`` rows of ``cfg.manifests`` into ``out_dir`` (default ``cfg.cache_dir``).

    Pass the trainer's ``codec`` / ``text_encoder`` to cache exactly those (else loaded from
    ``cfg.model``). Resumable: shards of an earlier, matching build are kept; a build made from
    something else is replaced.
    """
    target = out_dir if out_dir is not None else cfg.cache_dir
    if target is None:
        raise ConfigError("no cache folder: set cache_dir in the training config or pass --out DIR")
    if not cfg.manifests:
        raise ConfigError("no manifests to cache: set manifests in the training config (from `cxrgen prepare`)")
    cache_dir = Path(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows = ManifestImageDataset(cfg.manifests, cfg.split, cfg.image)  # the trainer's rows, in its order
    paths, prompts = rows.paths, rows.prompts
    codec, text = load_cache_parts(cfg, codec, text_encoder)
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **_layout(cfg, codec, text, len(paths)),
                "fingerprint": cache_fingerprint(cfg, codec, text), "prompts": prompts, "image_paths": paths}
    existing = read_index(cache_dir)
    done = _done_shards(existing, expected, cache_dir)
    bounds = shard_bounds(len(paths), cfg.cache.shard_size)
    null_ok = text is None or (cache_dir / NULL_NAME).is_file()
    if existing is not None and existing.get("complete") and len(done) == len(bounds) and null_ok:
        log.info("cache in %s is complete and matches: nothing to do", cache_dir)
        return cache_dir
    if not done:
        remove_cache_files(cache_dir)  # leftovers of an interrupted or different build
    save_config(cfg, cache_dir / CACHE_CONFIG_NAME)
    was_training = codec.training
    codec.eval()
    try:
        if text is not None:
            _encode_null(text, cache_dir, cfg.cache.dtype)
        index = {**expected, "info": _info(codec, text), "shards": done, "complete": False}
        _write_shards(cfg, codec, text, rows, bounds, {s["file"]: s for s in done}, index, cache_dir)
    finally:
        codec.train(was_training)
    index["complete"] = True
    write_index(index, cache_dir)
    log.info("cached %d rows in %d shard(s) in %s", len(paths), len(bounds), cache_dir)
    return cache_dir


def _info(codec: LatentCodec, text: TextEncoder | None) -> dict[str, Any]:
    """Full configs of the parts, for the record (not compared: the fingerprint is)."""
    return {"autoencoder_config": to_dict(codec.cfg),
            "text_encoder_config": None if text is None else to_dict(text.config)}


def _write_shards(cfg: TrainConfig, codec: LatentCodec, text: TextEncoder | None, rows: ManifestImageDataset,
                  bounds: list[tuple[int, int]], records: dict[str, dict], index: dict[str, Any],
                  cache_dir: Path) -> None:
    """Encode every shard not in ``records`` (batches never cross a shard), writing the index after each."""
    pending = [(k, start, stop) for k, (start, stop) in enumerate(bounds) if shard_name(k) not in records]
    step = cfg.cache.batch_size
    batches = [list(range(i, min(i + step, stop))) for _, start, stop in pending for i in range(start, stop, step)]
    loader = DataLoader(rows, batch_sampler=batches, num_workers=cfg.cache.num_workers)
    device = next(codec.parameters()).device
    batch_iter = iter(loader)
    bar = tqdm(total=sum(stop - start for _, start, stop in pending), desc="cache", unit="img",
               disable=not cfg.progress)
    for k, start, stop in pending:
        parts: list[dict[str, torch.Tensor]] = []
        while sum(len(p["latent_mean"]) for p in parts) < stop - start:
            batch = next(batch_iter)
            encoded = _encode_batch(codec, text, batch["image"].to(device), list(batch["prompt"]))
            parts.append({key: _stored(v, cfg.cache.dtype, key) if v.is_floating_point() else v.cpu()
                          for key, v in encoded.items()})
            bar.update(len(batch["prompt"]))
        tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}  # (n, ...)
        size = write_tensors(tensors, cache_dir / shard_name(k), {"start": str(start), "stop": str(stop)})
        records[shard_name(k)] = {"file": shard_name(k), "start": start, "rows": stop - start, "bytes": size}
        index["shards"] = [records[shard_name(j)] for j in range(len(bounds)) if shard_name(j) in records]
        write_index(index, cache_dir)
    bar.close()


def run_cache(config_path: str | Path | None, overrides: list[str] | None = None,
              out_dir: str | Path | None = None) -> dict[str, Any]:
    """Load a TrainConfig, build its cache and return a summary (folder, rows, shards, bytes)."""
    cfg = load_config(TrainConfig, config_path, overrides)
    cache_dir = build_cache(cfg, out_dir)
    index = read_index(cache_dir) or {}
    files = [cache_dir / s["file"] for s in index.get("shards", [])] + [cache_dir / NULL_NAME]
    size = sum(f.stat().st_size for f in files if f.is_file())
    return {"cache_dir": str(cache_dir), "rows": index.get("rows"), "shards": len(index.get("shards", [])),
            "dtype": index.get("dtype"), "text_embeddings": index.get("context_shape") is not None, "bytes": size}
