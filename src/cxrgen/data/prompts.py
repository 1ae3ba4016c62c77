"""Prompt building and filtering (RoentGen: impression first, >= 7 characters, <= 77 tokens,
"No Finding" capped)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from cxrgen.config import PromptConfig
from cxrgen.data.manifest import POSITIVE, ReadSummary
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

_WORDS = re.compile(r"\w+|[^\w\s]")
_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def select_prompt(sections: Mapping[str, str], cfg: PromptConfig) -> str:
    """The prompt from report sections: impression, findings or both (fallback to the other)."""
    impression = (sections.get("impression") or "").strip()
    findings = (sections.get("findings") or "").strip()
    if cfg.section == "both":
        return " ".join(part for part in (findings, impression) if part)
    first, other = (impression, findings) if cfg.section == "impression" else (findings, impression)
    return first or (other if cfg.fallback else "")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at '.', '!' or '?' followed by a capital letter or digit."""
    return [s.strip() for s in _SENTENCES.split(text.strip()) if s.strip()]


def token_counter(cfg: PromptConfig) -> Callable[[str], int]:
    """Count tokens with the configured tokenizer (hub id or path), or words and punctuation marks."""
    if cfg.tokenizer is None:
        return lambda text: len(_WORDS.findall(text))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load tokenizer {cfg.tokenizer!r} to count prompt tokens ({exc}); give a local "
            "tokenizer folder or set prompt.tokenizer=null to count words"
        ) from exc
    return lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])


def fit_sentences(sentences: list[str], count: Callable[[str], int], max_tokens: int) -> str:
    """Join leading sentences while the result stays within ``max_tokens``."""
    kept: list[str] = []
    for sentence in sentences:
        if count(" ".join(kept + [sentence])) > max_tokens:
            break
        kept.append(sentence)
    return " ".join(kept)


def filter_prompts(df: pd.DataFrame, cfg: PromptConfig, summary: ReadSummary) -> pd.DataFrame:
    """Drop prompts that are too short or too long and cap "No Finding" rows; count every drop."""
    count = token_counter(cfg)
    prompts = df["prompt"].fillna("").astype(str).str.strip()
    empty = prompts == ""
    short = ~empty & (prompts.str.len() < cfg.min_chars)
    tokens = prompts.map(count)
    long = ~empty & ~short & (tokens > cfg.max_tokens)
    for mask, reason in (
        (empty, "no prompt text (no usable report section)"),
        (short, f"prompt shorter than {cfg.min_chars} characters"),
        (long, f"prompt over {cfg.max_tokens} tokens"),
    ):
        if mask.any():
            summary.drop(reason, int(mask.sum()))
    df = df[~(empty | short | long)]
    return cap_no_finding(df, cfg, summary)


def cap_no_finding(df: pd.DataFrame, cfg: PromptConfig, summary: ReadSummary) -> pd.DataFrame:
    """Keep at most ``cfg.no_finding_cap`` of the rows labelled "No Finding" (a seeded random subset)."""
    if cfg.no_finding_cap is None or len(df) == 0:
        return df
    is_nf = (df["No Finding"] == POSITIVE).to_numpy()
    n_nf, n_other = int(is_nf.sum()), int((~is_nf).sum())
    cap = cfg.no_finding_cap
    # largest k with k / (k + n_other) <= cap
    limit = n_nf if cap >= 1.0 else int(np.floor(cap * n_other / (1.0 - cap) + 1e-9))
    if n_nf <= limit:
        return df
    rng = np.random.default_rng(cfg.seed)
    nf_positions = np.flatnonzero(is_nf)
    drop = rng.choice(nf_positions, size=n_nf - limit, replace=False)
    keep = np.ones(len(df), dtype=bool)
    keep[drop] = False
    summary.drop(f'"No Finding" over the cap of {cap:.0%}', n_nf - limit)
    return df[keep]
