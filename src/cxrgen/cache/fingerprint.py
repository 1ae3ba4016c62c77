"""What made a cache: a fingerprint of the encoder weights, image convention and manifests, and its check.

Only what changes the cached values is compared: the autoencoder's encoder half (weights and
architecture; not the latent scale/shift, applied after the cache, nor the decoder), the frozen
text encoder (weights, tokenizer vocabulary, token limit, padding, null prompt), the image
convention, the split and the manifests (resolved path + content hash). Image files themselves
are not hashed (too slow on a 300k-image collection): replace a manifest when images change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrgen.autoencoder import LatentCodec
from cxrgen.config import TrainConfig, to_dict
from cxrgen.data.images import file_sha1
from cxrgen.errors import DataError
from cxrgen.text import TextEncoder

log = logging.getLogger(__name__)

#: Autoencoder state-dict prefixes that make the posterior (mean, std): encoder and quant_conv.
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
#: Autoencoder config fields that do not change the cached (unscaled) posterior.
AUTOENCODER_IGNORED = ("pretrained", "subfolder", "scale", "shift")
#: Text encoder config fields that change the cached context tokens (weights are hashed apart).
TEXT_FIELDS = ("backend", "max_length", "pad_to_max_length", "null_prompt")
#: Added to TEXT_FIELDS only for sentence pooling, so caches made before it existed stay valid.
SENTENCE_FIELDS = ("pooling", "max_sentences")
REBUILD_HINT = "rebuild it with `cxrgen cache CONFIG` (the same config you train with)"


class StaleCacheError(DataError):
    """A latent cache was made by other parts, images or manifests than the training config uses."""


def tensors_sha256(module: nn.Module, prefixes: tuple[str, ...] = ()) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state dict (keys under ``prefixes``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if prefixes and not name.startswith(prefixes):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # (numel,)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def autoencoder_fingerprint(codec: LatentCodec) -> dict[str, Any]:
    """Architecture and encoder-weights hash of a codec: what fixes its posterior mean and std."""
    arch = {k: v for k, v in to_dict(codec.cfg).items() if k not in AUTOENCODER_IGNORED}
    return {"architecture": arch, "encoder_sha256": tensors_sha256(codec.vae, ENCODER_PREFIXES)}


def text_fingerprint(encoder: TextEncoder) -> dict[str, Any]:
    """Token-relevant config, weights hash and tokenizer-vocabulary hash of a frozen text encoder."""
    vocab = sorted(encoder.tokenizer.get_vocab().items())
    vocab_hash = hashlib.sha256(json.dumps([type(encoder.tokenizer).__name__, vocab]).encode()).hexdigest()
    names = TEXT_FIELDS + (SENTENCE_FIELDS if encoder.config.pooling != "tokens" else ())
    fields = {k: getattr(encoder.config, k) for k in names}
    return {**fields, "weights_sha256": tensors_sha256(encoder), "tokenizer_sha256": vocab_hash}


def manifests_fingerprint(cfg: TrainConfig) -> list[dict[str, str]]:
    """Resolved path and content hash of each manifest of ``cfg``."""
    out = []
    for manifest in cfg.manifests:
        path = Path(manifest).resolve()
        if not path.is_file():
            raise DataError(f"manifest {manifest} does not exist; create it with `cxrgen prepare`")
        out.append({"path": str(path), "sha1": file_sha1(path)})
    return out


def cache_fingerprint(cfg: TrainConfig, codec: LatentCodec, text_encoder: TextEncoder | None) -> dict[str, Any]:
    """The fingerprint of the cache ``cfg`` would make with these parts (text only when given)."""
    return {
        "autoencoder": autoencoder_fingerprint(codec),
        "text_encoder": None if text_encoder is None else text_fingerprint(text_encoder),
        "image": to_dict(cfg.image),
        "split": cfg.split,
        "manifests": manifests_fingerprint(cfg),
    }


def fingerprint_mismatches(cached: dict[str, Any], current: dict[str, Any], text_frozen: bool) -> list[str]:
    """Human-readable differences between a cache's fingerprint and the current one (empty: they match).

    A cache with text embeddings still serves a trainable text encoder (its latents are used, its
    embeddings ignored); a frozen one needs embeddings made by the same encoder. A config naming no
    manifests (training from a copied cache alone) skips the manifest comparison.
    """
    problems = []
    for key in ("autoencoder", "image", "split"):
        if cached.get(key) != current.get(key):
            problems.append(f"{key}: {_describe(cached.get(key), current.get(key))}")
    if current.get("manifests"):  # a config without manifests trains on the cache's own rows
        problems.extend(_manifest_changes(cached.get("manifests") or [], current["manifests"]))
    if text_frozen:
        if cached.get("text_encoder") is None:
            problems.append("text_encoder: the cache holds no text embeddings but the text encoder is frozen")
        elif cached["text_encoder"] != current.get("text_encoder"):
            problems.append(f"text_encoder: {_describe(cached['text_encoder'], current.get('text_encoder'))}")
    return problems


def _manifest_changes(cached: list[dict[str, str]], current: list[dict[str, str]]) -> list[str]:
    """Manifests swapped for others, or edited since the cache was built."""
    cached_paths, current_paths = [m["path"] for m in cached], [m["path"] for m in current]
    if cached_paths != current_paths:
        return [f"manifests: the cache was built from {cached_paths}, the config names {current_paths}"]
    return [f"manifests: {now['path']} changed since the cache was built"
            for was, now in zip(cached, current, strict=True) if was["sha1"] != now["sha1"]]


def _describe(cached: Any, current: Any) -> str:
    """Which sub-fields differ (for dicts), else both values, kept short."""
    if isinstance(cached, dict) and isinstance(current, dict):
        keys = sorted(k for k in set(cached) | set(current) if cached.get(k) != current.get(k))
        return "differs in " + ", ".join(keys)
    text = f"cache has {cached!r}, config gives {current!r}"
    return text if len(text) < 400 else text[:400] + "..."
