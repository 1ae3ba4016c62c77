"""A light English check for report text: the share of its words found in an English radiology word list.

The labeler's rules are English; Spanish or French text would otherwise get confident wrong labels
("Pas de pneumothorax." -> Pneumothorax 1). The word list (``english_words.txt``, ~2,400 words)
holds the words of the IU X-ray reports and the covid-cxr-256 notes seen at least 3 times plus
English function words; ``tools/english_words.py`` rebuilds it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from cxrgen.errors import ReportError

WORDS_FILE = Path(__file__).with_name("english_words.txt")
#: Text whose share of known English words is below this is not labelled.
MIN_ENGLISH_SHARE = 0.5
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script)


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The English word list (lower case)."""
    return frozenset(WORDS_FILE.read_text(encoding="utf-8").split())


def english_share(text: str) -> float:
    """Share of the words (runs of letters) of ``text`` that are English words; NaN-free: 0.0 with no words."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    known = english_words()
    return sum(w in known for w in words) / len(words)


def check_english(text: str) -> str:
    """``text`` when it is non-blank English report text; ReportError saying what is wrong otherwise."""
    if not text or not text.strip():
        raise ReportError("give report text to label (it is empty), or --check-iu ARCHIVE")
    share = english_share(text)
    if share < MIN_ENGLISH_SHARE:
        raise ReportError(f"the labeler reads English only, and only {share:.0%} of the words of this text are "
                          f"English (needs {MIN_ENGLISH_SHARE:.0%}): give the report in English")
    return text
