"""Prompt building and filtering (RoentGen rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrgen.config import PromptConfig
from cxrgen.data.manifest import ReadSummary, new_manifest
from cxrgen.data.prompts import (
    cap_no_finding,
    filter_prompts,
    fit_sentences,
    select_prompt,
    split_sentences,
    token_counter,
)
from cxrgen.errors import ConfigError

SECTIONS = {"findings": "Small left effusion.", "impression": "Left effusion."}


def test_select_prompt_sections() -> None:
    assert select_prompt(SECTIONS, PromptConfig()) == "Left effusion."
    assert select_prompt(SECTIONS, PromptConfig(section="findings")) == "Small left effusion."
    assert select_prompt(SECTIONS, PromptConfig(section="both")) == "Small left effusion. Left effusion."
    only_findings = {"findings": "Small left effusion.", "impression": ""}
    assert select_prompt(only_findings, PromptConfig()) == "Small left effusion."
    assert select_prompt(only_findings, PromptConfig(fallback=False)) == ""


def _frame(prompts: list[str], no_finding: list[float] | None = None) -> pd.DataFrame:
    rows = [{"prompt": p, "patient_id": str(i), "No Finding": (no_finding or [np.nan] * len(prompts))[i]}
            for i, p in enumerate(prompts)]
    return new_manifest(rows)


def test_filter_counts_every_drop() -> None:
    long = " ".join(["word"] * 80)
    df = _frame(["", "Clear.", "Small left pleural effusion.", long])
    summary = ReadSummary("t")
    kept = filter_prompts(df, PromptConfig(), summary)
    assert kept["prompt"].tolist() == ["Small left pleural effusion."]
    assert summary.dropped["prompt shorter than 7 characters"] == 1
    assert summary.dropped["prompt over 77 tokens"] == 1
    assert sum(summary.dropped.values()) == 3


def test_token_limit_boundary() -> None:
    count = token_counter(PromptConfig())
    assert count("Small left effusion.") == 4
    at_limit = " ".join(["a"] * 77)
    summary = ReadSummary("t")
    assert len(filter_prompts(_frame([at_limit, at_limit + " b"]), PromptConfig(), summary)) == 1


def test_hf_tokenizer_counts_with_special_tokens(tmp_path) -> None:
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "small", "left", "effusion", "."]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "tok")
    count = token_counter(PromptConfig(tokenizer=str(tmp_path / "tok")))
    assert count("small left effusion.") == 6  # [CLS] + 4 + [SEP]
    with pytest.raises(ConfigError, match="tokenizer"):
        token_counter(PromptConfig(tokenizer=str(tmp_path / "missing")))


def test_no_finding_cap_share_and_seed() -> None:
    nf = [1.0] * 60 + [0.0] * 40
    df = _frame([f"Prompt number {i}." for i in range(100)], nf)
    summary = ReadSummary("t")
    kept = cap_no_finding(df, PromptConfig(no_finding_cap=0.2), summary)
    share = (kept["No Finding"] == 1.0).mean()
    assert share <= 0.2 and len(kept) == 50  # 10 "No Finding" kept beside 40 others
    assert summary.dropped['"No Finding" over the cap of 20%'] == 50
    again = cap_no_finding(df, PromptConfig(no_finding_cap=0.2), ReadSummary("t"))
    other = cap_no_finding(df, PromptConfig(no_finding_cap=0.2, seed=1), ReadSummary("t"))
    assert kept.index.tolist() == again.index.tolist() != other.index.tolist()
    assert len(cap_no_finding(df, PromptConfig(no_finding_cap=None), ReadSummary("t"))) == 100


def test_sentences_and_fit() -> None:
    sentences = split_sentences("Left effusion. Heart normal. 2 nodules seen.")
    assert sentences == ["Left effusion.", "Heart normal.", "2 nodules seen."]
    count = token_counter(PromptConfig())
    assert fit_sentences(sentences, count, 6) == "Left effusion. Heart normal."
