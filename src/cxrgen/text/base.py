"""The TextEncoder interface: prompts -> (context (B, L, D), mask (B, L)), with its tokenizer.

Every back-end holds a Hugging Face tokenizer (``PreTrainedTokenizerBase``), so tokenizing,
truncation, padding and saving tokenizer files are shared here; a back-end only says how token
ids become token features (``encode_tokens``) and how its weights are saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import ModelMixin
from torch import nn

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

#: File of a saved text encoder: its class, TextEncoderConfig fields and ``by_reference`` (true: the
#: folder names a frozen encoder's source, hub id or installed package, instead of holding its weights).
#: Beside it, a back-end's own files (e.g. transformers' config.json, safetensors and tokenizer).
TEXT_ENCODER_CONFIG_NAME = "text_encoder_config.json"
#: A sentence ends at . ; ! or ? followed by white space (so "3.5 cm" stays whole).
SENTENCE_END = re.compile(r"(?<=[.;!?])\s+")
#: sentences per forward pass of encode_sentences (each distinct sentence of the prompts is encoded once)
SENTENCE_CHUNK = 256


def saved_by_reference(directory: str | Path) -> bool:
    """Whether the text encoder saved in ``directory`` names its source instead of holding its weights."""
    path = Path(directory) / TEXT_ENCODER_CONFIG_NAME
    return path.is_file() and bool(json.loads(path.read_text(encoding="utf-8")).get("by_reference", False))


def split_sentences(prompt: str) -> list[str]:
    """The sentences of a report, in order; a prompt with none (e.g. "") is one sentence itself."""
    parts = [part.strip() for part in SENTENCE_END.split(prompt.strip())]
    return [part for part in parts if part] or [prompt]


class TextEncoder(ModelMixin, ABC):
    """Turns prompts into context tokens for the denoiser; frozen unless ``config.trainable``.

    A ModelMixin so that a DiffusionPipeline saves and loads it with the methods below.
    """

    #: Back-end name in the registry (cxrgen.text.TEXT_ENCODERS).
    backend: ClassVar[str]
    #: Submodule names that exist in a loaded model but never touch the token features
    #: (e.g. BERT's pooler); they stay frozen so a trainable encoder has no unused parameters.
    unused_submodules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TextEncoderConfig, tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer

    # ---------------------------------------------------------------------------------------
    # Back-end hooks
    # ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width D of the context tokens."""

    @abstractmethod
    def encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token features (B, L, D) of token ids (B, L) with their mask (B, L) bool (True = real token)."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write the weights (safetensors) and whatever config rebuilding the network needs."""

    # ---------------------------------------------------------------------------------------
    # Shared behaviour
    # ---------------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """Whether the encoder learns (gets gradients) with the denoiser."""
        return self.config.trainable

    @property
    def max_length(self) -> int:
        """Token limit; longer prompts are truncated (with a warning)."""
        return self.config.max_length

    @property
    def context_length(self) -> int:
        """Context positions per prompt: max_length tokens, or max_sentences with sentence pooling."""
        return self.config.context_length

    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters (token ids are moved there)."""
        return next(self.parameters()).device

    def _apply_trainable(self) -> None:
        """Set requires_grad and train/eval mode from ``config.trainable``; call at the end of __init__."""
        self.requires_grad_(self.trainable)
        for path, module in self.named_modules():
            if path.rsplit(".", 1)[-1] in self.unused_submodules:
                module.requires_grad_(False)
        self.train(self.trainable)

    def train(self, mode: bool = True) -> TextEncoder:
        """Like nn.Module.train, but a frozen encoder always stays in eval mode (no dropout)."""
        return super().train(mode and self.trainable)

    def tokenize(self, prompts: list[str], pad_to_max_length: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) long and mask (B, L) bool on the encoder's device; truncation is logged.

        ``pad_to_max_length`` None: as ``config.pad_to_max_length`` (False: pad to the longest prompt).
        """
        prompts = _check_prompts(prompts)
        n_long = self._count_truncated(prompts)
        if n_long:
            log.warning(
                "%d of %d prompt(s) exceed text.max_length=%d tokens and were truncated",
                n_long,
                len(prompts),
                self.max_length,
            )
        fixed = self.config.pad_to_max_length if pad_to_max_length is None else pad_to_max_length
        batch = self.tokenizer(
            prompts,
            padding="max_length" if fixed else "longest",
            max_length=self.max_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)  # (B, L)
        mask = batch["attention_mask"].to(self.device).bool()  # (B, L)
        return ids, mask

    def _count_truncated(self, prompts: list[str]) -> int:
        lengths = self.tokenizer(prompts, truncation=False, padding=False, verbose=False)["input_ids"]
        return sum(len(ids) > self.max_length for ids in lengths)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (B, L, D) float and mask (B, L) bool for a list of prompts (no grad when frozen).

        L counts tokens; with ``config.pooling`` "sentences" it counts sentences (``encode_sentences``),
        with "both" the max_sentences sentence vectors come first, then the tokens.
        """
        if self.config.pooling == "sentences":
            return self.encode_sentences(prompts)
        ids, mask = self.tokenize(prompts)
        with self._grad_mode():
            context = self.encode_tokens(ids, mask)  # (B, L, D)
        if self.config.pooling == "both":  # sentences first: the tokens' trailing padding can be trimmed
            sentences, sentence_mask = self.encode_sentences(prompts, pad_to_max=True)  # (B, S, D)
            return torch.cat([sentences, context], dim=1), torch.cat([sentence_mask, mask], dim=1)
        return context, mask

    def encode_sentences(self, prompts: list[str], pad_to_max: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One context vector per sentence: (B, S, D) and mask (B, S), S = max_sentences (or the most given).

        Each sentence is encoded on its own and its token features mean-pooled (sentence-transformers'
        pooling, which sentence encoders such as MiniLM were trained for: paraphrases land close),
        L2-normalised and scaled by sqrt(D) (unit mean square per feature). ``pad_to_max`` None: as
        ``config.pad_to_max_length``. Reports with more than ``max_sentences`` keep their first ones.
        """
        prompts = _check_prompts(prompts)
        limit = self.config.max_sentences
        split = [split_sentences(p) for p in prompts]
        n_long = sum(len(s) > limit for s in split)
        if n_long:
            log.warning("%d of %d prompt(s) have more than text.max_sentences=%d sentences; the rest were dropped",
                        n_long, len(prompts), limit)
        split = [s[:limit] for s in split]
        counts = torch.tensor([len(s) for s in split])
        fixed = self.config.pad_to_max_length if pad_to_max is None else pad_to_max
        width = limit if fixed else int(counts.max())
        rows = torch.repeat_interleave(torch.arange(len(split)), counts).to(self.device)  # (N,) report of each sentence
        cols = torch.cat([torch.arange(int(c)) for c in counts]).to(self.device)  # (N,) its place in the report
        flat = [s for sentences in split for s in sentences]
        # each distinct sentence once (reports repeat sentences: templates, negations), shortest first in chunks
        unique = sorted(dict.fromkeys(flat), key=len)
        where = {s: i for i, s in enumerate(unique)}
        with self._grad_mode():
            pooled = torch.cat([self._pool(unique[i:i + SENTENCE_CHUNK])
                                for i in range(0, len(unique), SENTENCE_CHUNK)])  # (U, D)
            pooled = pooled[torch.tensor([where[s] for s in flat], device=pooled.device)]  # (N, D)
            context = pooled.new_zeros(len(split), width, pooled.shape[-1]).index_put((rows, cols), pooled)
        sentence_mask = torch.zeros(len(split), width, dtype=torch.bool, device=self.device)
        sentence_mask[rows, cols] = True
        return context, sentence_mask  # (B, S, D), (B, S)

    def _pool(self, sentences: list[str]) -> torch.Tensor:
        """(N, D) sentence vectors: token features mean-pooled, L2-normalised, scaled by sqrt(D)."""
        ids, mask = self.tokenize(sentences, pad_to_max_length=False)
        features = self.encode_tokens(ids, mask)  # (N, L, D)
        weights = mask[..., None].to(features.dtype)  # (N, L, 1)
        pooled = (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (N, D)
        return nn.functional.normalize(pooled, dim=-1) * math.sqrt(pooled.shape[-1])

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        """Gradients flow only through a trainable encoder."""
        return contextlib.nullcontext() if self.trainable else torch.no_grad()

    @torch.no_grad()
    def encode_all(self, prompts: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (N, context_length, D) and mask (N, context_length) of many prompts, in order, without grad.

        Prompts are encoded in batches of similar length, each padded only to its longest, so a long
        list costs far less than ``encode`` with max-length padding. Padding positions come back as
        zeros with mask False (the denoisers mask them); real tokens get the same features as from
        ``encode`` for every encoder whose real tokens do not attend to padding (all back-ends here).
        """
        if batch_size < 1:
            raise ConfigError(f"encode_all(batch_size={batch_size}): give a positive batch size")
        prompts = _check_prompts(prompts)
        if self.config.pooling != "tokens":  # sentences are short: all at once (each distinct sentence encoded once)
            sentences, sentence_mask = self.encode_sentences(prompts, pad_to_max=True)
            sentences, sentence_mask = sentences.float().cpu(), sentence_mask.cpu()
            if self.config.pooling == "sentences":
                return sentences, sentence_mask
            context, mask = self._encode_tokens_all(prompts, batch_size)
            return torch.cat([sentences, context], dim=1), torch.cat([sentence_mask, mask], dim=1)
        return self._encode_tokens_all(prompts, batch_size)

    def _encode_tokens_all(self, prompts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_all's token features: length-sorted batches, zero-padded to max_length, input order."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        context = torch.zeros(len(prompts), self.max_length, self.hidden_size)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, batch_mask = self.tokenize([prompts[i] for i in rows], pad_to_max_length=False)
            features = self.encode_tokens(ids, batch_mask).float().cpu()  # (b, n, D), n = longest in the batch
            batch_mask = batch_mask.cpu()
            n = ids.shape[1]
            context[rows, :n] = features.masked_fill(~batch_mask[..., None], 0.0)
            mask[rows, :n] = batch_mask
        return context, mask

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``encode`` (so the encoder can be called like any module)."""
        return self.encode(prompts)

    def encode_null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null-prompt context (batch_size, L, D) and mask for classifier-free guidance."""
        if batch_size <= 0:
            raise ConfigError(f"encode_null(batch_size={batch_size}): give a positive batch size")
        return self.encode([self.config.null_prompt] * batch_size)

    def save_pretrained(self, directory: str | Path, weights: bool = True, **kwargs: Any) -> Path:
        """Write the config (JSON), weights (safetensors) and tokenizer files, for ``from_pretrained``.

        ``weights=False`` writes only the config, marked ``by_reference``: the folder then refers to the
        frozen encoder's source (e.g. the packaged MiniLM), which must be loadable wherever it is read.
        """
        directory = Path(directory)
        if not weights:
            self.check_by_reference()
        directory.mkdir(parents=True, exist_ok=True)
        record = {"_class_name": type(self).__name__, **dataclasses.asdict(self.config), "by_reference": not weights}
        (directory / TEXT_ENCODER_CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if weights:
            self._save_weights(directory)
            self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> TextEncoder:
        """Load a folder written by ``save_pretrained`` (diffusers' loading options are accepted, unused)."""
        from cxrgen.text.registry import load_text_encoder

        return load_text_encoder(directory)

    def check_by_reference(self) -> None:
        """Refuse a by-reference save that would lose weights (trained, or with no source to reload)."""
        if self.trainable:
            raise ConfigError("a trainable text encoder has its own weights: save it with weights=True")
        if self.backend == "scratch":
            raise ConfigError("the scratch text encoder exists only in its saved weights: save it with weights=True")


def _check_prompts(prompts: list[str]) -> list[str]:
    """A non-empty list of strings (a lone string is a common slip: refuse it rather than split it)."""
    if isinstance(prompts, str):
        raise ConfigError("encode() takes a list of prompts; wrap a single prompt as [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("encode() got an empty prompt list; give at least one prompt")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prompts must be strings; got {sorted(set(bad))}")
    return prompts
