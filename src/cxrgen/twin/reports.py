"""Reports for twin cases: the phantom's templates plus real IU X-ray sentences chosen by the labeler.

A real sentence is used for a finding only when the cxrgen labeler reads exactly that finding in it
(its side and size where the case has them; its lobe by name for consolidation and nodules) and
nothing the case contradicts; a real negative sentence only when every observation it denies is
absent from the case. The IU reports are split by a hash of their id into a "train" pool and a
"heldout" pool, so held-out wordings never share a report with training ones.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrgen.data.iu import read_iu_archive
from cxrgen.data.labeler import label_report, split_sentences
from cxrgen.data.manifest import NEGATIVE, POSITIVE
from cxrgen.errors import ConfigError
from cxrgen.phantom.reports import TEMPLATES, WORDINGS, fill_template
from cxrgen.twin.findings import TwinFindings

log = logging.getLogger(__name__)

HELDOUT_SHARE = 0.2  # share of IU reports (by id hash) whose sentences are held-out wordings
#: Sentences about change over time, earlier studies or list numbers describe no single radiograph.
_NOT_THIS_IMAGE = re.compile(r"^\s*\d|x+x|\b(interval|prior|previous\w*|again|unchanged|stable|resolv\w*|improv\w*|"
                             r"increas\w*|decreas\w*|compar\w*|since|no longer|persist\w*|residual|redemonstrat\w*|"
                             r"chang\w*|new|recent\w*|follow-?up|ct|lateral view|pa view)\b", re.I)
#: Which twin finding each CheXpert observation speaks of; None: never present in the twin.
OBSERVATION_FINDING: dict[str, str | None] = {
    "Pleural Effusion": "effusion", "Pneumothorax": "pneumothorax", "Consolidation": "consolidation",
    "Lung Opacity": "consolidation", "Pneumonia": "consolidation", "Cardiomegaly": "cardiomegaly",
    "Enlarged Cardiomediastinum": "cardiomegaly", "Lung Lesion": "nodule", "Edema": None, "Atelectasis": None,
    "Fracture": None, "Support Devices": None, "Pleural Other": None,
}
POSITIVE_OBSERVATIONS: dict[str, frozenset[str]] = {
    "effusion": frozenset({"Pleural Effusion"}), "pneumothorax": frozenset({"Pneumothorax"}),
    "cardiomegaly": frozenset({"Cardiomegaly"}), "nodule": frozenset({"Lung Lesion"}),
}
CONSOLIDATION_OBSERVATIONS = frozenset({"Consolidation", "Lung Opacity", "Pneumonia"})
LOBE_WORDS: dict[str, re.Pattern] = {
    "right_upper": re.compile(r"right upper lobe|\brul\b", re.I),
    "right_middle": re.compile(r"right middle lobe|\brml\b|\bmiddle lobe", re.I),
    "right_lower": re.compile(r"right lower lobe|\brll\b", re.I),
    "left_upper": re.compile(r"left upper lobe|\blul\b|lingula", re.I),
    "left_lower": re.compile(r"left lower lobe|\blll\b", re.I),
}
NODULE_TEMPLATES = {
    "train": ("A {mm} mm nodule in the {lobe} lobe.", "{Lobe} lobe pulmonary nodule measuring {mm} mm.",
              "There is a {mm} mm {lobe} lobe nodule."),
    "heldout": ("Rounded {mm} mm opacity in the {lobe} lobe, likely a nodule.",),
    "dev": ("A nodule of {mm} mm projects over the {lobe} lobe.",),
}
MASS_TEMPLATES = {"train": ("A {cm} cm mass in the {lobe} lobe.", "{Lobe} lobe mass measuring {cm} cm."),
                  "heldout": ("Large rounded opacity of the {lobe} lobe, {cm} cm, consistent with a mass.",),
                  "dev": ("The {lobe} lobe holds a mass {cm} cm across.",)}


@dataclass(frozen=True)
class Sentence:
    """One real sentence and what the labeler reads in it."""

    text: str
    positives: frozenset[str]  # observations labelled 1
    negatives: frozenset[str]  # observations labelled 0
    side: str | None
    size: str | None


def _pool(uid: str) -> str:
    h = int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < HELDOUT_SHARE else "train"


@functools.lru_cache(maxsize=2)
def iu_sentences(archive: str) -> dict[str, list[Sentence]]:
    """Usable sentences of the IU archive, by pool; sentences with uncertain or no readings are left out."""
    pools: dict[str, list[Sentence]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for report in read_iu_archive(Path(archive)):
        pool = _pool(report.uid)
        for section in ("findings", "impression"):
            for text in split_sentences(report.sections.get(section, "")):
                if (pool, text.lower()) in seen or not 3 <= len(text.split()) <= 25 or _NOT_THIS_IMAGE.search(text):
                    continue
                seen.add((pool, text.lower()))
                res = label_report(text)
                labels = {k: v for k, v in res.labels.items() if k != "No Finding"}
                if not labels or any(v not in (POSITIVE, NEGATIVE) for v in labels.values()):
                    continue
                pos = frozenset(k for k, v in labels.items() if v == POSITIVE)
                detail = next(iter(res.details.values()), {}) if len(pos) == 1 else {}
                pools[pool].append(Sentence(text, pos, frozenset(k for k, v in labels.items() if v == NEGATIVE),
                                            detail.get("laterality"), detail.get("size")))
    log.info("IU sentences: %s", {k: len(v) for k, v in pools.items()})
    return dict(pools)


def _denied_ok(s: Sentence, present: set[str]) -> bool:
    return all(OBSERVATION_FINDING.get(o) not in present for o in s.negatives)


def positive_matches(s: Sentence, finding: str, f: TwinFindings) -> bool:
    """Does the labeler read exactly ``finding`` of ``f`` (with its side, size or lobe) in ``s``?"""
    if not _denied_ok(s, f.present):
        return False
    if finding == "consolidation":
        return bool(s.positives) and s.positives <= CONSOLIDATION_OBSERVATIONS \
            and bool(LOBE_WORDS[f.consolidation_lobe].search(s.text)) and s.side == f.consolidation_lobe.split("_")[0]
    if s.positives != POSITIVE_OBSERVATIONS[finding]:
        return False
    if finding == "effusion":
        return s.side == f.effusion_side and s.size == f.effusion_size
    if finding == "pneumothorax":
        return s.side == f.pneumothorax_side and s.size in (None, f.pneumothorax_size)
    if finding == "nodule":
        return bool(LOBE_WORDS[f.nodule_lobe].search(s.text)) and not re.search(r"\d", s.text)
    return s.size in (None, "small", "moderate")  # cardiomegaly: "mild", "moderate" or unqualified


def _template_sentence(finding: str, f: TwinFindings, rng: np.random.Generator, wording: str) -> str:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    t = TEMPLATES[wording]
    if finding == "effusion":
        key = "effusion_bilateral" if f.effusion_side == "bilateral" else "effusion"
        side = "" if f.effusion_side == "bilateral" else f.effusion_side
        return fill_template(pick(t[key]), side=side, size=f.effusion_size)
    if finding == "pneumothorax":
        key = "pneumothorax_apical" if f.pneumothorax_size == "small" else "pneumothorax_large"
        return fill_template(pick(t[key]), side=f.pneumothorax_side)
    if finding == "consolidation":
        return fill_template(pick(t["consolidation"]), lobe=f.consolidation_lobe.replace("_", " "))
    if finding == "cardiomegaly":
        return pick(t["cardiomegaly"])
    lobe = f.nodule_lobe.replace("_", " ")
    if f.nodule_mm >= 30:
        return pick(MASS_TEMPLATES[wording]).format(cm=f"{f.nodule_mm / 10:.1f}", lobe=lobe, Lobe=lobe.capitalize())
    return pick(NODULE_TEMPLATES[wording]).format(mm=int(round(f.nodule_mm)), lobe=lobe, Lobe=lobe.capitalize())


def twin_report(f: TwinFindings, rng: np.random.Generator, wording: str = "train", archive: str | None = None,
                real_share: float = 0.5, negation_prob: float = 0.5) -> tuple[str, str]:
    """(findings, impression) for ``f``: each positive from a real sentence with chance ``real_share``
    (when one matches), else a template; absent findings denied with chance ``negation_prob``."""
    if wording not in WORDINGS:
        raise ConfigError(f"wording={wording!r}: use one of {list(WORDINGS)}")
    pool = iu_sentences(str(archive)).get(wording, []) if archive else []
    order = [k for k in ("effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule") if k in f.present]
    positives, impression = [], []
    for finding in order:
        real = [s.text for s in pool if positive_matches(s, finding, f)] if rng.uniform() < real_share else []
        positives.append(real[int(rng.integers(len(real)))] if real else _template_sentence(finding, f, rng, wording))
        impression.append(_template_sentence(finding, f, rng, wording))
    negatives = _negatives(f, rng, wording, pool, negation_prob)
    if not order:
        impression = [TEMPLATES[wording]["normal"][int(rng.integers(len(TEMPLATES[wording]["normal"])))]]
    return " ".join(positives + negatives), " ".join(impression)


def _negatives(f: TwinFindings, rng: np.random.Generator, wording: str, pool: list[Sentence], prob: float) -> list[str]:
    """Denials of absent findings: a real sentence that denies only absent findings, or a template."""
    t = TEMPLATES[wording]
    out = []
    for finding, key in (("effusion", "no_effusion"), ("pneumothorax", "no_ptx"),
                         ("consolidation", "no_consolidation"), ("cardiomegaly", "normal_heart")):
        if finding in f.present or rng.uniform() >= prob:
            continue
        real = [s.text for s in pool if not s.positives and s.negatives and _denied_ok(s, f.present)
                and any(OBSERVATION_FINDING.get(o) == finding for o in s.negatives)]
        if real and rng.uniform() < 0.5:
            out.append(real[int(rng.integers(len(real)))])
        else:
            out.append(t[key][int(rng.integers(len(t[key])))])
    return list(dict.fromkeys(out))
