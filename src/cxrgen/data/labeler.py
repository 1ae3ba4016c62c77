"""Rule-based labeler for the 14 CheXpert observations (after Irvin et al., CheXpert, AAAI 2019).

Three stages as in CheXpert: find mentions per sentence (``labeler_rules.MENTIONS``), classify each
mention by the negation and uncertainty cues of its clause, aggregate per observation with
positive > uncertain > negative. "No Finding" is 1 when no pathology is positive or uncertain
(Support Devices do not count) and the report has text; otherwise it is absent, as in CheXpert.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from cxrgen.data import labeler_rules as R
from cxrgen.data.manifest import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from cxrgen.data.reports import clean_text

NO_FINDING = "No Finding"
#: Observations that do not block "No Finding".
NOT_PATHOLOGY: frozenset[str] = frozenset({NO_FINDING, "Support Devices"})
#: Aggregation order over mentions: a higher rank wins (CheXpert: positive > uncertain > negative).
_RANK = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}

#: A sentence ends after . ! ? (but not after a list number "2.") or before a list number.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b\d\.)(?<!\b\d\d\.)\s+|\s+(?=\d{1,2}\.\s)")


@dataclass
class LabelResult:
    """Labels (1, 0, -1; unmentioned observations absent) and per-observation details (laterality, size)."""

    labels: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready ``{"labels": {...}, "details": {...}}`` in CheXpert column order."""
        labels = {k: self.labels[k] for k in CHEXPERT_LABELS if k in self.labels}
        return {"labels": labels, "details": {k: dict(v) for k, v in self.details.items()}}

    def as_row(self) -> dict[str, float]:
        """All 14 observations as a manifest row; NaN where not mentioned."""
        return {k: self.labels.get(k, math.nan) for k in CHEXPERT_LABELS}


@dataclass(frozen=True)
class Mention:
    """One mention of an observation: where it is in its clause and the status its cues give it."""

    label: str
    start: int
    end: int
    status: float


def split_sentences(text: str) -> list[str]:
    """Split cleaned report text into sentences (on . ! ? and numbered list items)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _clauses(sentence: str) -> list[str]:
    """Split a lower-case sentence at clause breaks ("but", ";", "however", ...) that no cue crosses."""
    return [c for c in R.CLAUSE_BREAK.split(sentence) if c.strip()]


def _mask(text: str, pattern: re.Pattern) -> str:
    """Blank out the matches of ``pattern`` (keeping offsets) so later cue searches skip them."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _nearest_cue(cues: list[tuple[float, re.Pattern, str]], before: bool) -> float | None:
    """Status of the cue nearest the mention: ending last in text before it, or starting first after it."""
    best: tuple[int, float] | None = None
    for status, pattern, text in cues:
        for m in pattern.finditer(text):
            key = -m.end() if before else m.start()
            if best is None or key < best[0]:
                best = (key, status)
    return None if best is None else best[1]


def _cue_status(clause: str, start: int, gap: tuple[int, int] | None, end: int) -> float | None:
    """Status from the cues around a mention at ``clause[start:end]`` (None: no cue applies).

    Before the mention only text after the last PRE_CUE_BREAK counts and the nearest cue wins;
    after it, the gap of an attribute rule plus at most POST_CUE_WORDS words. Negated hedges
    ("cannot be excluded") are masked before negation cues are searched.
    """
    text = _mask(clause, R.PSEUDO_NEGATION)
    pre = text[:start]
    breaks = list(R.PRE_CUE_BREAK.finditer(pre))
    pre = pre[breaks[-1].end():] if breaks else pre
    pre_masked = _mask(pre, R.NEGATED_UNCERTAINTY)
    status = _nearest_cue([(UNCERTAIN, R.NEGATED_UNCERTAINTY, pre), (NEGATIVE, R.PRE_NEGATION, pre_masked),
                           (UNCERTAIN, R.PRE_UNCERTAINTY, pre_masked)], before=True)
    if status is not None:
        return status
    after = (text[gap[0]:gap[1]] + " ") if gap else ""
    after += " ".join(text[end:].split()[: R.POST_CUE_WORDS])
    after_masked = _mask(after, R.NEGATED_UNCERTAINTY)
    return _nearest_cue([(UNCERTAIN, R.NEGATED_UNCERTAINTY, after), (NEGATIVE, R.POST_NEGATION, after_masked),
                         (UNCERTAIN, R.POST_UNCERTAINTY, after_masked)], before=False)


def _resolve(default: float, cue: float | None) -> float:
    """Combine a rule's default with its cue: a NEGATIVE default stays negative, a cue wins otherwise."""
    if default == NEGATIVE or cue is None:
        return default
    return cue


def find_mentions(clause: str) -> list[Mention]:
    """Every mention in one lower-case clause with its status, in text order."""
    found: list[Mention] = []
    for label, rules in R.MENTIONS.items():
        excluded = [m.span() for m in R.EXCLUSIONS[label].finditer(clause)] if label in R.EXCLUSIONS else []
        for rule in rules:
            for m in rule.pattern.finditer(clause):
                if any(m.start() < b and a < m.end() for a, b in excluded):  # overlaps an exclusion
                    continue
                gap = m.span("gap") if "gap" in rule.pattern.groupindex else None
                cue = _cue_status(clause, m.start(), gap, m.end())
                found.append(Mention(label, m.start(), m.end(), _resolve(rule.default, cue)))
    return sorted(found, key=lambda x: (x.start, x.end))


def _nearest_word(text: str, table: tuple[tuple[str, re.Pattern], ...], from_end: bool) -> str | None:
    """The table value whose pattern matches nearest the end (or start) of ``text``."""
    return _nearest_cue([(value, pattern, text) for value, pattern in table], before=from_end)


def mention_details(clause: str, mention: Mention, mentions: list[Mention]) -> dict[str, str]:
    """Laterality and size stated next to a mention, read up to the neighbouring mentions."""
    prev_end = max((m.end for m in mentions if m.end <= mention.start), default=0)
    next_start = min((m.start for m in mentions if m.start >= mention.end), default=len(clause))
    before = clause[max(prev_end, mention.start - R.DETAIL_CHARS_BEFORE):mention.start]
    inside = clause[mention.start:mention.end]
    after = clause[mention.end:min(next_start, mention.end + R.DETAIL_CHARS_AFTER)]
    details: dict[str, str] = {}
    sides = {v for v, p in R.LATERALITY for _ in p.finditer(before + " " + inside)}
    side = "bilateral" if {"left", "right"} <= sides else _nearest_word(before + " " + inside, R.LATERALITY, True)
    side = side or _nearest_word(after, R.LATERALITY, False)
    if side:
        details["laterality"] = side
    size = _nearest_word(before + " " + inside, R.SIZE, True)
    if size:
        details["size"] = size
    return details


def _merge_details(target: dict[str, str], new: dict[str, str]) -> None:
    """Merge details of another mention: left + right becomes bilateral, a first stated size stays."""
    side, other = target.get("laterality"), new.get("laterality")
    if other and side and side != other:
        target["laterality"] = "bilateral"
    elif other:
        target["laterality"] = other
    if "size" in new and "size" not in target:
        target["size"] = new["size"]


def label_report(text: str) -> LabelResult:
    """Label a report (any sections, free text) with the 14 CheXpert observations."""
    cleaned = clean_text(text)
    labels: dict[str, float] = {}
    per_status: dict[tuple[str, float], dict[str, str]] = {}
    for sentence in split_sentences(cleaned):
        for clause in _clauses(sentence.lower()):
            mentions = find_mentions(clause)
            for mention in mentions:
                old = labels.get(mention.label)
                if old is None or _RANK[mention.status] > _RANK[old]:
                    labels[mention.label] = mention.status
                if mention.status != NEGATIVE:
                    key = (mention.label, mention.status)
                    _merge_details(per_status.setdefault(key, {}), mention_details(clause, mention, mentions))
    if cleaned and not any(v in (POSITIVE, UNCERTAIN) for k, v in labels.items() if k not in NOT_PATHOLOGY):
        labels[NO_FINDING] = POSITIVE
    details = {k: d for (k, s), d in per_status.items() if d and labels.get(k) == s}
    return LabelResult(labels={k: labels[k] for k in CHEXPERT_LABELS if k in labels},
                       details={k: details[k] for k in CHEXPERT_LABELS if k in details})
