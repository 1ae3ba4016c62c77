"""Report sentences for phantom findings, in three disjoint wording sets: "train", "heldout" and "dev".

Training prompts use only the "train" templates; the benchmark (:func:`benchmark_prompts`) uses
only "heldout" ones, so a model must generalise across wordings, not memorise strings. "dev" is a
third set for choosing between models on unseen wordings without reading the held-out ones (e.g. a
twin set's validate split with ``cxrgen twin --validate-wording dev``). The training
set varies the sentence structure (side before or after the finding, "right", "right-sided", "on
the right side") but never uses the held-out set's own words ("hemithorax", "pleural space",
"apex", "opacity", "unremarkable", ...; the tests check both).
"""

from __future__ import annotations

import numpy as np

from cxrgen.config import PhantomConfig
from cxrgen.errors import ConfigError
from cxrgen.phantom.findings import CTR_ENLARGED, CTR_NORMAL, FINDINGS, PhantomFindings

WORDINGS: tuple[str, ...] = ("train", "heldout", "dev")
BENCHMARK_SEED = 20240905  # fixes the benchmark's wording choices (a constant set, not a sample)

# Placeholders: {side} right/left, {sided} right-sided/left-sided, {size} small/moderate/large,
# {lobe} "right upper" etc. A template list per wording; each list is drawn from uniformly.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "effusion": ("{Size} {side} pleural effusion.", "There is a {size} {sided} pleural effusion.",
                     "{Size} {side} pleural fluid.", "{Size} {sided} effusion.",
                     "{Sided} {size} pleural effusion.", "{Size} pleural effusion on the {side}.",
                     "{Size} effusion at the {side} lung base.", "The {side} pleural effusion is {size}.",
                     "{Size} amount of {side} pleural fluid.", "Pleural effusion on the {side} side, {size}.",
                     "There is {size} pleural fluid on the {side}.", "{Size} layering effusion on the {side}."),
        "effusion_bilateral": ("{Size} bilateral pleural effusions.",
                               "There are {size} bilateral pleural effusions.",
                               "{Size} pleural fluid on both sides.", "Bilateral {size} effusions.",
                               "{Size} right and left pleural effusions.",
                               "Pleural effusions on the right and on the left, both {size}."),
        "pneumothorax_large": ("Large {side} pneumothorax.", "There is a large {sided} pneumothorax.",
                               "Large {side} pneumothorax with partial lung collapse.",
                               "{Sided} large pneumothorax.", "Large pneumothorax on the {side} side.",
                               "The {side} lung is partly collapsed by a large pneumothorax.",
                               "Pneumothorax on the {side}, large, with a visible lung edge."),
        "pneumothorax_apical": ("Small {side} apical pneumothorax.",
                                "There is a small apical {sided} pneumothorax.",
                                "{Sided} small apical pneumothorax.", "Small apical pneumothorax on the {side}.",
                                "Tiny pneumothorax at the top of the {side} lung."),
        "consolidation": ("Focal consolidation in the {lobe} lobe.", "{Lobe} lobe consolidation.",
                          "Airspace consolidation in the {lobe} lobe, concerning for pneumonia.",
                          "Consolidation of the {lobe} lobe.", "{Lobe} lobe airspace disease.",
                          "There is consolidation in the {lobe} lobe.", "{Lobe} lobe pneumonia.",
                          "Dense consolidation involving the {lobe} lobe."),
        "cardiomegaly": ("Cardiomegaly.", "The heart is enlarged.", "Enlarged cardiac silhouette.",
                         "Mild cardiomegaly.", "Cardiac enlargement.", "Enlarged heart."),
        "no_effusion_ptx": ("No pleural effusion or pneumothorax.", "No effusion or pneumothorax.",
                            "No pneumothorax or pleural effusion.", "Neither effusion nor pneumothorax.",
                            "No pneumothorax and no pleural effusion.", "Negative for effusion and pneumothorax.",
                            "Pleural effusion and pneumothorax are absent.", "Without effusion or pneumothorax."),
        "no_effusion": ("No pleural effusion.", "No pleural fluid.", "No effusion.", "There is no pleural effusion.",
                        "Pleural effusion is not seen.", "No pleural effusion is identified.",
                        "Negative for pleural effusion.", "No effusion on either side."),
        "no_ptx": ("No pneumothorax.", "There is no pneumothorax.", "Pneumothorax is not seen.",
                   "No pneumothorax is identified.", "Negative for pneumothorax.", "Pneumothorax is absent.",
                   "No pneumothorax on either side.", "Without pneumothorax."),
        "no_consolidation": ("No focal consolidation.", "Lungs are clear without consolidation.",
                             "No consolidation.", "No focal airspace disease.", "Consolidation is not seen.",
                             "Negative for pneumonia.", "No lobar consolidation.", "No airspace consolidation."),
        "normal_heart": ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                         "Normal cardiac size.", "The heart is not enlarged."),
        "normal": ("No acute cardiopulmonary process.", "Normal chest radiograph.", "No acute abnormality.",
                   "No active disease."),
    },
    "heldout": {
        "effusion": ("A {size} effusion is seen in the {side} pleural space.",
                     "{Sided} pleural effusion, {size} in size.",
                     "{Size} collection of fluid in the {side} hemithorax."),
        "effusion_bilateral": ("{Size} effusions in both pleural spaces.",
                               "Bilateral pleural effusions, {size} in size."),
        "pneumothorax_large": ("A large pneumothorax is present on the {side}.",
                               "{Sided} pneumothorax, large."),
        "pneumothorax_apical": ("A small pneumothorax is seen at the {side} apex.",
                                "{Sided} apical pneumothorax, small."),
        "consolidation": ("Patchy airspace opacity in the {lobe} lobe.",
                          "Pneumonia of the {lobe} lobe."),
        "cardiomegaly": ("The cardiac silhouette is enlarged.", "Heart size is increased."),
        "no_effusion_ptx": ("There is no effusion and no pneumothorax.",),
        "no_effusion": ("Costophrenic angles are sharp; no effusion.",),
        "no_ptx": ("No evidence of pneumothorax.",),
        "no_consolidation": ("No airspace opacity.",),
        "normal_heart": ("Normal heart size.",),
        "normal": ("Unremarkable chest radiograph.", "No acute findings in the chest."),
    },
    # for model selection on unseen wordings: in no training and no held-out report
    "dev": {
        "effusion": ("The {side} lung base is blunted by a {size} effusion.",
                     "{Size} fluid layering at the {side} base.",
                     "The {side} chest shows a {size} pleural effusion."),
        "effusion_bilateral": ("{Size} effusions at both lung bases.",
                               "Both lung bases are blunted by {size} effusions."),
        "pneumothorax_large": ("The {side} lung has partially collapsed from a large pneumothorax.",
                               "A {sided} pneumothorax is seen, and it is large."),
        "pneumothorax_apical": ("Small pneumothorax over the top of the {side} lung.",
                                "A {sided} pneumothorax is seen at the lung top, small."),
        "consolidation": ("Airspace filling within the {lobe} lobe.",
                          "The {lobe} lobe is consolidated, compatible with pneumonia."),
        "cardiomegaly": ("The heart appears large.", "The cardiac size is large."),
        "no_effusion_ptx": ("No pleural fluid and no pneumothorax are seen.",),
        "no_effusion": ("The lung bases are clear of fluid.",),
        "no_ptx": ("The lungs are fully expanded.",),
        "no_consolidation": ("The lungs are clear.",),
        "normal_heart": ("The heart is of normal size.",),
        "normal": ("The chest is normal.", "No acute chest disease."),
    },
}


def fill_template(template: str, side: str = "", size: str = "", lobe: str = "") -> str:
    sided = f"{side}-sided" if side else ""
    return template.format(side=side, sided=sided, size=size, lobe=lobe, Size=size.capitalize(),
                           Sided=sided.capitalize(), Lobe=lobe.capitalize())


def _pick(rng: np.random.Generator, wording: str, key: str) -> str:
    options = TEMPLATES[wording][key]
    return options[int(rng.integers(len(options)))]


def _positive_sentences(f: PhantomFindings, rng: np.random.Generator, wording: str) -> list[str]:
    out = []
    if f.effusion_side == "bilateral":
        out.append(fill_template(_pick(rng, wording, "effusion_bilateral"), size=f.effusion_size))
    elif f.effusion_side != "none":
        out.append(fill_template(_pick(rng, wording, "effusion"), side=f.effusion_side, size=f.effusion_size))
    if f.pneumothorax_side != "none":
        key = f"pneumothorax_{f.pneumothorax_extent}"
        out.append(fill_template(_pick(rng, wording, key), side=f.pneumothorax_side))
    if f.consolidation_lobe != "none":
        lobe = f.consolidation_lobe.replace("_", " ")
        out.append(fill_template(_pick(rng, wording, "consolidation"), lobe=lobe))
    if f.cardiomegaly:
        out.append(_pick(rng, wording, "cardiomegaly"))
    return out


def _negative_sentences(f: PhantomFindings, rng: np.random.Generator, wording: str, prob: float) -> list[str]:
    out = []
    no_eff, no_ptx = f.effusion_side == "none", f.pneumothorax_side == "none"
    if no_eff and no_ptx and rng.uniform() < prob:
        out.append(_pick(rng, wording, "no_effusion_ptx"))
    else:
        if no_eff and rng.uniform() < prob:
            out.append(_pick(rng, wording, "no_effusion"))
        if no_ptx and rng.uniform() < prob:
            out.append(_pick(rng, wording, "no_ptx"))
    if f.consolidation_lobe == "none" and rng.uniform() < prob:
        out.append(_pick(rng, wording, "no_consolidation"))
    if not f.cardiomegaly and rng.uniform() < prob:
        out.append(_pick(rng, wording, "normal_heart"))
    return out


def report_for(findings: PhantomFindings, rng: np.random.Generator, wording: str = "train",
               cfg: PhantomConfig | None = None) -> str:
    """A report for ``findings``: positive sentences first, then some negations, in varied wording."""
    if wording not in WORDINGS:
        raise ConfigError(f"wording={wording!r}: use one of {list(WORDINGS)}")
    prob = (cfg or PhantomConfig()).negation_prob
    positives = _positive_sentences(findings, rng, wording)
    negatives = _negative_sentences(findings, rng, wording, prob)
    if not positives:
        head = [_pick(rng, wording, "normal")]
        return " ".join(head + negatives)
    order = rng.permutation(len(positives))
    return " ".join([positives[i] for i in order] + negatives)


def _benchmark_findings() -> list[PhantomFindings]:
    """The fixed findings grid: each side, size, extent and lobe alone, some pairs, and normals."""
    normal, big = sum(CTR_NORMAL) / 2, sum(CTR_ENLARGED) / 2
    grid = [PhantomFindings(effusion_side=s, effusion_size=z, ctr=normal)
            for s in ("right", "left", "bilateral") for z in ("small", "moderate", "large")]
    grid += [PhantomFindings(pneumothorax_side=s, pneumothorax_extent=e, ctr=normal)
             for s in ("right", "left") for e in ("apical", "large")]
    grid += [PhantomFindings(consolidation_lobe=lobe, ctr=normal)
             for lobe in ("right_upper", "right_lower", "left_upper", "left_lower")]
    grid += [PhantomFindings(ctr=big), PhantomFindings(ctr=normal)]
    grid += [PhantomFindings(effusion_side="left", effusion_size="large", ctr=big),
             PhantomFindings(effusion_side="right", effusion_size="moderate", pneumothorax_side="left",
                             pneumothorax_extent="large", ctr=normal),
             PhantomFindings(effusion_side="left", effusion_size="small", consolidation_lobe="right_upper",
                             ctr=normal),
             PhantomFindings(pneumothorax_side="right", pneumothorax_extent="apical",
                             consolidation_lobe="left_lower", ctr=big)]
    return grid


def benchmark_prompts(per_case: int = 4, wording: str = "heldout",
                      findings: tuple[str, ...] = FINDINGS) -> list[tuple[str, PhantomFindings]]:
    """A fixed list of (prompt, truth) pairs covering laterality, sizes and negations.

    ``wording`` "heldout" (the benchmark: wordings never used in training) or "train" (the training
    templates: separates "the model cannot follow the text" from "it cannot generalise the wording").
    ``findings`` keeps only the cases whose findings are all among them (for a model trained on fewer).
    """
    if wording not in WORDINGS:
        raise ConfigError(f"wording={wording!r}: use one of {list(WORDINGS)}")
    unknown = set(findings) - set(FINDINGS)
    if unknown or not findings:
        raise ConfigError(f"findings={findings!r}: give some of {list(FINDINGS)}")
    rng = np.random.default_rng(BENCHMARK_SEED)
    out = []
    for truth in _benchmark_findings():
        for _ in range(per_case):
            prompt = report_for(truth, rng, wording=wording)  # drawn for every case: wordings do not shift
            if truth.present <= set(findings):
                out.append((prompt, truth))
    return out
