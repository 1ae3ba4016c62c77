"""A training-free report codec: report text <-> a fixed-size latent (B, L_r, D_r), no weights to learn.

A stand-in for the Optimus-style report autoencoder (:mod:`cxrgen.text.report_ae`) behind the same
interface, ``encode(reports) -> latent`` and ``decode(latent) -> reports``, so the joint denoiser can be
trained and tested before (and compared with) the learned one. Encoding: lower-cased word unigrams and
bigrams ("no left", "left pleural", ...; bigrams keep most negations) hashed into ``buckets`` counts
(the hashing trick, Weinberger et al. 2009), L2-normalised, then a fixed Gaussian random projection
(Johnson-Lindenstrauss) to ``tokens * token_dim`` values of unit variance. Decoding: the nearest report
(cosine) of a bank of known reports (the training reports), i.e. retrieval, not free text.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from cxrgen.errors import ConfigError

BANK_NAME = "reports.json"
CONFIG_NAME = "config.json"
_WORD = re.compile(r"[a-z]+")


def report_features(report: str, buckets: int) -> torch.Tensor:
    """Hashed unigram + bigram counts (buckets,) of one report, L2-normalised."""
    words = _WORD.findall(report.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    counts = torch.zeros(buckets)
    for g in grams:
        counts[zlib.crc32(g.encode()) % buckets] += 1.0  # crc32: stable across runs, unlike hash()
    return counts / counts.norm().clamp_min(1e-12)


def check_reports(reports: Sequence[str]) -> list[str]:
    """A non-empty list of reports with words; ConfigError naming the first empty one."""
    reports = [reports] if isinstance(reports, str) else list(reports)
    if not reports:
        raise ConfigError("no reports given: give at least one report text")
    for i, r in enumerate(reports):
        if not isinstance(r, str) or not _WORD.search(r.lower()):
            raise ConfigError(f"report {i} is empty or has no words: give report text (e.g. 'small left "
                              "pleural effusion')")
    return reports


class HashedReportCodec(ModelMixin, ConfigMixin):
    """Report text <-> latent (B, tokens, token_dim) by hashed n-grams and a seeded random projection."""

    config_name = CONFIG_NAME

    @register_to_config
    def __init__(self, tokens: int = 4, token_dim: int = 64, buckets: int = 4096, seed: int = 0) -> None:
        super().__init__()
        if min(tokens, token_dim, buckets) < 1:
            raise ConfigError(f"tokens={tokens}, token_dim={token_dim}, buckets={buckets}: give positive sizes")
        gen = torch.Generator().manual_seed(seed)
        projection = torch.randn(buckets, tokens * token_dim, generator=gen)  # (V, L_r * D_r), N(0, 1)
        self.register_buffer("projection", projection, persistent=False)  # recomputed from the seed
        self.bank: list[str] = []
        self.register_buffer("bank_latents", torch.zeros(0, tokens * token_dim), persistent=False)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(L_r, D_r) of one report's latent."""
        return (self.config.tokens, self.config.token_dim)

    @torch.no_grad()
    def encode(self, reports: Sequence[str]) -> torch.Tensor:
        """Latents (B, L_r, D_r), about unit variance per value (unit-norm features times N(0, 1))."""
        reports = check_reports(reports)
        feats = torch.stack([report_features(r, self.config.buckets) for r in reports])  # (B, V)
        z = feats.to(self.projection.device) @ self.projection  # (B, L_r * D_r)
        return z.reshape(len(reports), *self.latent_shape)  # (B, L_r, D_r)

    def set_bank(self, reports: Sequence[str]) -> HashedReportCodec:
        """Keep ``reports`` (deduplicated, in order) as the texts ``decode`` retrieves."""
        self.bank = list(dict.fromkeys(check_reports(reports)))
        self.bank_latents = self.encode(self.bank).flatten(1)  # (K, L_r * D_r)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[str]:
        """The bank report nearest (cosine) to each latent (B, L_r, D_r)."""
        if not self.bank:
            raise ConfigError("the report codec has no report bank to decode into: call set_bank(training reports)")
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ConfigError(f"report latents of shape {tuple(latents.shape)}: expected (B, *{self.latent_shape})")
        flat = torch.nn.functional.normalize(latents.flatten(1).float(), dim=1)  # (B, L_r * D_r)
        bank = torch.nn.functional.normalize(self.bank_latents.to(flat.device), dim=1)  # (K, L_r * D_r)
        return [self.bank[i] for i in (flat @ bank.T).argmax(dim=1).tolist()]

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """Write ``config.json`` and the bank (``reports.json``); there are no weights."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.save_config(out)
        (out / BANK_NAME).write_text(json.dumps(self.bank, indent=0) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, subfolder: str | None = None, **kwargs: Any) -> HashedReportCodec:
        """Load a folder written by :meth:`save_pretrained` (diffusers' loading options are ignored)."""
        folder = Path(directory) / (subfolder or "")
        if not (folder / CONFIG_NAME).is_file():
            raise ConfigError(f"no {CONFIG_NAME} in {folder}: give a folder written by HashedReportCodec.save_pretrained")
        saved = {k: v for k, v in cls.load_config(folder).items() if not k.startswith("_")}
        codec = cls(**saved)
        bank = folder / BANK_NAME
        if bank.is_file():
            reports = json.loads(bank.read_text(encoding="utf-8"))
            if reports:
                codec.set_bank(reports)
        return codec
