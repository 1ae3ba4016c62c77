"""Write src/cxrgen/data/english_words.txt: the word list of the labeler's English check.

Words of the IU X-ray reports' findings and impressions (all sections of its archive, not just the
labeler's test) seen at least MIN_COUNT times, plus the words of the covid-cxr-256 notes, plus
common English function words. Run: python tools/english_words.py ../shared/data
``--check`` instead measures false refusals: a list from the even-numbered IU reports only, applied
to the findings + impression of the odd-numbered ones.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from cxrgen.data.iu import read_iu_archive

MIN_COUNT = 3
WORD = re.compile(r"[a-z]+")
FUNCTION_WORDS = """a about above after again against all also an and any are as at be been before being below
between both but by can could did do does down during each few for from further had has have having here how if in
into is it its itself just more most much no nor not now of off on once only or other out over own same seen should
show shows so some such than that the their them then there these they this those through to too under until up
upon very was were what when where which while who why will with within without would yes you""".split()
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "cxrgen" / "data" / "english_words.txt"


def check(data_root: str) -> None:
    """Share of held-out English IU reports the check would refuse (list built from the other half)."""
    from cxrgen.data.language import _WORD, MIN_ENGLISH_SHARE

    reports = read_iu_archive(Path(data_root) / "iu-xray-reports" / "NLMCXR_reports.tgz")
    counts: Counter[str] = Counter()
    for report in reports[::2]:
        for text in report.sections.values():
            counts.update(WORD.findall(text.lower()))
    words = {w for w, c in counts.items() if c >= MIN_COUNT and len(w) > 1} | set(FUNCTION_WORDS)
    texts = [" ".join(r.sections.get(k, "") for k in ("findings", "impression")).strip() for r in reports[1::2]]
    shares = [sum(w in words for w in ws) / len(ws) for ws in (_WORD.findall(t.lower()) for t in texts) if ws]
    refused = sum(s < MIN_ENGLISH_SHARE for s in shares)
    print(f"{refused} of {len(shares)} held-out IU reports refused (share < {MIN_ENGLISH_SHARE})")


def main(data_root: str) -> None:
    root = Path(data_root)
    counts: Counter[str] = Counter()
    for report in read_iu_archive(root / "iu-xray-reports" / "NLMCXR_reports.tgz"):
        for text in report.sections.values():
            counts.update(WORD.findall(text.lower()))
    notes = pd.read_csv(root / "covid-cxr-256" / "metadata.csv", dtype=str)["clinical_notes"].dropna()
    for text in notes:
        counts.update(WORD.findall(text.lower()))
    words = {w for w, c in counts.items() if c >= MIN_COUNT and len(w) > 1} | set(FUNCTION_WORDS)
    OUTPUT.write_text("\n".join(sorted(words)) + "\n", encoding="utf-8")
    print(f"wrote {len(words)} words to {OUTPUT}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--check"]
    (check if "--check" in sys.argv else main)(args[0] if args else "../shared/data")
