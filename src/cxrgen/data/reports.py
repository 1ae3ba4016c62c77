"""Radiology report text: de-identification clean-up, section parsing and safe file reading.

Section names follow the normalisation of the MIMIC-CXR section parser
(Johnson et al., MIMIC-CXR, ``section_parser.py``): "CONCLUSION" and the combined
"FINDINGS AND IMPRESSION" headers count as the impression.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from cxrgen.errors import ConfigError, ReportError

log = logging.getLogger(__name__)

#: De-identification marks: MIMIC-CXR writes ``___``, the IU X-ray collection writes ``XXXX``.
_DEID = re.compile(r"_{3,}|X{4,}|\bXXX\b")
#: IU's de-identification also caught "ray" in "x-ray" ("Normal chest x-XXXX."): restore the word.
_XRAY = re.compile(r"\b([xX])-X{4,}")
#: Punctuation left doubled or dangling where a mark was removed ("evaluation.. 's").
_DOUBLE_PERIOD = re.compile(r"\.(\s*\.)+")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])")

#: Known header names (lower case, inner spaces single) -> section key.
HEADER_KEYS: dict[str, str] = {
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "indication": "indication",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "clinical information": "indication",
    "history": "history",
    "clinical history": "history",
    "technique": "technique",
    "comparison": "comparison",
    "comparisons": "comparison",
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "findings and impression": "impression",
    "impression and findings": "impression",
    "findings/impression": "impression",
    "impression/findings": "impression",
    "recommendation": "recommendation",
    "recommendations": "recommendation",
    "notification": "notification",
    "wet read": "wet_read",
}

#: A header: a known name at the start of a line, then a colon; the text after it on the line stays.
_HEADER = re.compile(
    r"^[ \t]*(" + "|".join(sorted((re.escape(h).replace(r"\ ", r"\s+") for h in HEADER_KEYS),
                                   key=len, reverse=True)) + r")[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
_FINAL_REPORT = re.compile(r"^\s*final\s+report\s*$", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Remove de-identification marks (``___``, ``XXXX``) and collapse all whitespace to single spaces."""
    text = _XRAY.sub(r"\1-ray", text)
    text = _DEID.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _DOUBLE_PERIOD.sub(".", text)


def _header_key(raw: str) -> str:
    return HEADER_KEYS[_SPACE.sub(" ", raw.strip().lower())]


def parse_sections(text: str | Mapping[str, str | None]) -> dict[str, str]:
    """Split a report into cleaned sections keyed by lower-case name (findings, impression, ...).

    ``text`` is MIMIC-style free text with headers at line starts, or an already sectioned
    mapping (IU X-ray XML) whose values are only cleaned. Text before the first header goes to
    "preamble" unless it is just "FINAL REPORT"; a repeated section is joined with a space.
    """
    if isinstance(text, Mapping):
        out = {str(k).strip().lower(): clean_text(v or "") for k, v in text.items()}
        return {k: v for k, v in out.items() if v}
    matches = list(_HEADER.finditer(text))
    pieces: list[tuple[str, str]] = []
    preamble = text[: matches[0].start()] if matches else text
    lines = [ln for ln in preamble.splitlines() if ln.strip() and not _FINAL_REPORT.match(ln)]
    if lines:
        pieces.append(("preamble", "\n".join(lines)))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        pieces.append((_header_key(m.group(1)), text[m.end():end]))
    sections: dict[str, str] = {}
    for key, body in pieces:
        body = clean_text(body)
        if body:
            sections[key] = f"{sections[key]} {body}" if key in sections else body
    return sections


def report_part(text: str, part: str = "full") -> str:
    """``text`` as given (``part`` "full") or its IMPRESSION section (``"impression"``; the whole text when the
    report has none), as :func:`parse_sections` finds it."""
    if part == "full":
        return text
    if part != "impression":
        raise ConfigError(f"report part {part!r}: use 'full' or 'impression'")
    impression = parse_sections(text).get("impression", "")
    if not impression:
        log.debug("report without an IMPRESSION section, the whole text is read: %.80r", text)
        return text
    return impression


def read_report_file(path: str | Path) -> str:
    """Read one report as UTF-8 text; a missing, empty or non-UTF-8 file raises ReportError."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"report file {path} does not exist; check the path or the manifest row")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReportError(
            f"report file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from exc
    if not text.strip():
        raise ReportError(f"report file {path} is empty; remove the row or supply the report text")
    return text
