"""Phrase rules of the rule-based CheXpert labeler: mentions per observation, negation and uncertainty cues.

Modelled on the CheXpert labeler (Irvin et al., AAAI 2019) and NegBio (Peng et al., 2018):
mentions are found per sentence, then classified by cues in their clause. All patterns work on
lower-case text. Conventions chosen here (documented in the tests too):

* hedges such as "likely", "probable", "suggestive of", "versus" are UNCERTAIN (CheXpert counts
  them as uncertain; "consistent with" is positive);
* "no definite X" is NEGATIVE;
* granuloma is not a Lung Lesion (CheXpert lists nodules and masses, not granulomas); a "nodule"
  counts even when calcified, a "nodular opacity/density" is an UNCERTAIN lesion;
* "volume loss" is an UNCERTAIN atelectasis (it also follows resection or fibrosis);
* "suspicious X" states X, "suspicious for X" hedges X; "compatible with" is positive;
* "age-indeterminate fracture" is a fracture; "no change in X" keeps X positive;
* blunted costophrenic angles are an UNCERTAIN pleural effusion (effusion vs pleural thickening);
* pulmonary vascular congestion, cephalization and CHF make Edema UNCERTAIN (CheXpert lists them as
  edema mentions; radiologically they are stage-1 congestion or a clinical diagnosis, not edema).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxrgen.data.manifest import NEGATIVE, POSITIVE, UNCERTAIN

#: How many words after a mention a post-mention cue ("... is not seen") may be.
POST_CUE_WORDS = 6
#: How many words between a subject ("heart size") and its predicate ("enlarged") at most.
ATTRIBUTE_GAP_WORDS = 7


@dataclass(frozen=True)
class Rule:
    """One mention pattern; ``default`` is its status when no cue applies.

    A pattern with a ``gap`` group ("heart size (is not) enlarged") treats the gap as text after
    the mention, so cues inside it ("not", "may be") apply. A NEGATIVE default stays negative.
    """

    pattern: re.Pattern
    default: float = POSITIVE


def _rx(text: str) -> re.Pattern:
    return re.compile(text, re.IGNORECASE)


def _words(*alternatives: str) -> str:
    return r"\b(?:" + "|".join(alternatives) + r")\b"


def _attribute(subject: str, predicate: str, stop: str) -> re.Pattern:
    """``subject ... predicate`` with at most ATTRIBUTE_GAP_WORDS words between, none of them a ``stop`` word."""
    gap = rf"(?P<gap>(?:[\s,]+(?!{stop})[\w/-]+){{0,{ATTRIBUTE_GAP_WORDS}}}?)"
    return _rx(rf"\b(?:{subject}){gap}[\s,]+(?:{predicate})\b")


def _before(predicate: str, subject: str) -> re.Pattern:
    """``predicate [one or two words] subject``, e.g. "normal heart size", "mildly enlarged heart"."""
    return _rx(rf"\b(?:{predicate})(?:[\s-]+[\w-]+){{0,2}}?[\s-]+(?:{subject})\b")


# --- predicates shared by the attribute rules -----------------------------------------------------
_NORMAL = r"normal|within normal limits|unremarkable|normal in size|not enlarged"
_ENLARGED = r"enlarged|enlargement|large|increased|widened|widening|wide"
_BORDERLINE = r"borderline|prominent|mildly prominent|upper limits of normal"
_PREDICATE_WORDS = r"(?:normal|within|unremarkable|enlarg\w*|large|increased|widen\w*|wide|borderline|prominent|clear|stable|unchanged)\b"

_HEART = (r"heart(?: size)?|cardiac (?:silhouette|size|shadow|contours?|borders?)|cardiac(?= and mediastinal)"
          r"|cardiomediastinal (?:silhouette|contours?|size)")
_MEDIASTINUM = (r"(?:superior )?mediastin(?:um|al (?:contours?|silhouette|width|structures))"
                r"|cardiomediastinal (?:silhouette|contours?|size)")
_VESSELS = r"(?:pulmonary )?(?:vascularity|vasculature|vascular markings|vessels)"
_LUNGS = r"lungs?|lung fields|lung parenchyma"

MENTIONS: dict[str, tuple[Rule, ...]] = {
    "Enlarged Cardiomediastinum": (
        Rule(_rx(_words(r"mediastinal (?:widening|enlargement)", r"widened mediastinum",
                        r"enlarged cardiomediastin\w+(?: silhouette)?", r"cardiomediastinal enlargement"))),
        Rule(_attribute(_MEDIASTINUM, r"widened|widening|enlarged|enlargement|wide", _PREDICATE_WORDS)),
        Rule(_attribute(_MEDIASTINUM, r"prominent|borderline", _PREDICATE_WORDS), UNCERTAIN),
        Rule(_attribute(_MEDIASTINUM, _NORMAL, _PREDICATE_WORDS), NEGATIVE),
        Rule(_before(r"normal|unremarkable", _MEDIASTINUM), NEGATIVE),
    ),
    "Cardiomegaly": (
        Rule(_rx(_words(r"cardiomegaly", r"cardiac enlargement", r"enlarged heart",
                        r"enlargement of the (?:heart|cardiac silhouette)"))),
        Rule(_attribute(r"heart(?: size)?|cardiac (?:silhouette|size|shadow|contours?)", _ENLARGED, _PREDICATE_WORDS)),
        Rule(_before(r"enlarged|large", r"heart|cardiac silhouette")),
        Rule(_attribute(r"cardiomediastinal (?:silhouette|contours?|size)", _ENLARGED, _PREDICATE_WORDS), UNCERTAIN),
        Rule(_attribute(_HEART, _BORDERLINE, _PREDICATE_WORDS), UNCERTAIN),
        Rule(_attribute(_HEART, _NORMAL, _PREDICATE_WORDS), NEGATIVE),
        Rule(_before(r"normal|unremarkable", _HEART), NEGATIVE),
    ),
    "Lung Opacity": (
        Rule(_rx(_words(r"opaci\w+", r"infiltrat\w*", r"air[\s-]?space (?:disease|process|opacit\w+)",
                        r"hazy", r"haziness", r"ground[\s-]glass", r"(?:increased|focal|patchy|parenchymal) densit\w+",
                        r"densit(?:y|ies) (?:in|at|within) the (?:\w+ )?(?:lung|lobe|base|bases|apex)"))),
        Rule(_attribute(_LUNGS, r"clear", r"(?:normal|enlarg\w*|hyperinflat\w*)\b"), NEGATIVE),
    ),
    "Lung Lesion": (
        Rule(_rx(_words(r"nodules?", r"mass(?:es)?", r"mass[\s-]?like", r"tumou?rs?", r"neoplasms?", r"carcinoma",
                        r"metasta\w+", r"(?:lung|pulmonary|cavitary|focal|parenchymal|spiculated) lesions?"))),
        # "nodular opacity/density" is how a radiologist hedges on a true nodule (vs nipple, bone, overlap).
        Rule(_rx(_words(r"nodular(?:[\s-]like)? (?:\w+ )?(?:opacit\w+|densit\w+|infiltrat\w+|foc\w+|shadows?|lesions?)")),
             UNCERTAIN),
    ),
    "Edema": (
        Rule(_rx(_words(r"edema", r"kerley b?[\s-]?lines?", r"interstitial fluid"))),
        # Vascular congestion / redistribution is Milne's stage 1 of hydrostatic edema and heart
        # failure a clinical diagnosis: evidence for edema, not edema itself, hence UNCERTAIN.
        Rule(_rx(_words(r"chf", r"(?:congestive )?heart failure", r"(?:pulmonary )?vascular congestion",
                        r"(?:pulmonary|venous) congestion", r"congestive changes?", r"(?:fluid|volume) overload",
                        r"cephalization", r"vascular redistribution", r"pulmonary venous (?:hypertension|congestion)",
                        r"(?:vascular|venous) engorgement")), UNCERTAIN),
        Rule(_attribute(_VESSELS, r"congested|engorged|cephalized|indistinct|increased|prominent", _PREDICATE_WORDS),
             UNCERTAIN),
        Rule(_attribute(_VESSELS, _NORMAL, _PREDICATE_WORDS), NEGATIVE),
        Rule(_before(r"normal", _VESSELS), NEGATIVE),
    ),
    "Consolidation": (Rule(_rx(_words(r"consolidat\w*"))),),
    "Pneumonia": (
        Rule(_rx(_words(r"pneumonias?", r"bronchopneumonia", r"pneumonitis", r"infections?", r"infectious"))),
    ),
    "Atelectasis": (
        Rule(_rx(_words(r"atelecta\w+", r"collapsed?"))),
        # Volume loss also follows resection or fibrosis: a sign of atelectasis, not atelectasis itself.
        Rule(_rx(_words(r"volume loss", r"loss of (?:lung )?volume")), UNCERTAIN),
    ),
    "Pneumothorax": (Rule(_rx(_words(r"pneumothora\w*", r"hydropneumothora\w*", r"ptx",
                                     r"pleural air(?: collections?)?"))),),
    "Pleural Effusion": (
        Rule(_rx(_words(r"effusions?", r"pleural fluid", r"hydrothorax", r"hydropneumothora\w*"))),
        Rule(_rx(_words(r"blunt\w*(?: of)?(?: the)?(?: \w+)?(?: posterior| lateral)? costophrenic (?:angles?|sulc\w+|recess\w*)",
                        r"costophrenic (?:angles?|sulc\w+|recess\w*) (?:are |is )?(?:\w+ )?blunt\w*")), UNCERTAIN),
        Rule(_attribute(r"costophrenic (?:angles?|sulc\w+|recess\w*)", r"sharp|clear|normal", _PREDICATE_WORDS), NEGATIVE),
    ),
    "Pleural Other": (
        Rule(_rx(_words(r"pleural (?:thickening|scar\w*|plaques?|calcification\w*)", r"pleuro-?parenchymal scar\w*",
                        r"pleural[\s-]parenchymal scar\w*", r"fibrothorax", r"thickening of the (?:\w+ )?pleura",
                        r"apical (?:pleural )?cap(?:ping)?"))),
    ),
    "Fracture": (Rule(_rx(_words(r"fractur\w*", r"fx"))),),
    "Support Devices": (
        Rule(_rx(_words(
            r"tubes?", r"catheters?", r"picc", r"port-?a-?cath", r"mediport", r"(?:chest|power|infusion|venous access) port",
            r"(?:central|venous|arterial|midline|dialysis|swan[\s-]ganz|ij|jugular|subclavian|femoral|picc|port) (?:\w+ )?lines?",
            r"lines? and tubes?", r"tubes? and lines?", r"pacemakers?", r"pacers?", r"a?icds?", r"defibrillators?",
            r"(?:pacemaker|pacer|cardiac|transvenous|epicardial|ecg|ekg|monitoring) (?:leads?|wires?)",
            r"leads? (?:terminat\w+|project\w*|overl\w+|in)", r"sternotomy", r"(?:sternal|surgical) (?:wires|sutures|clips)",
            r"(?:surgical |vascular )?clips", r"stents?", r"drains?", r"(?:prosthetic|mechanical|replacement) valves?",
            r"valve replacement", r"hardware", r"(?:fixation|fusion) (?:rods?|screws?|plates?|hardware)", r"screws",
            r"electrodes?", r"loop recorder", r"support devices?", r"(?:cardiac|medical|implanted) devices?"))),
    ),
}

#: Phrases that contain a mention word but name something else ("pericardial effusion").
EXCLUSIONS: dict[str, re.Pattern] = {
    "Pleural Effusion": _rx(_words(r"pericardial effusions?", r"joint effusions?", r"effusions? of the (?:knee|joint)")),
    "Atelectasis": _rx(_words(r"(?:vertebral|vertebra|compression|body|bodies) collapsed?",
                              r"collapse of (?:the )?(?:\w+ )?(?:vertebr\w+|\w+ vertebral body)")),
    "Lung Lesion": _rx(_words(r"mass effect", r"(?:body|muscle|bone) mass", r"(?:interstitial|reticul\w+)[\s-]nodular")),
    "Edema": _rx(_words(r"(?:soft tissue|subcutaneous) edema")),
    "Lung Opacity": _rx(_words(r"(?:bone|breast|nipple|soft tissue) densit\w+", r"nipple shadows?")),
    "Support Devices": _rx(_words(r"tube[\s-]?like")),
}

# --- clause scope -----------------------------------------------------------------------------------
#: Ends a clause: no cue crosses it.
CLAUSE_BREAK = _rx(r";|:|" + _words(r"but", r"however", r"although", r"though", r"whereas", r"while", r"except",
                                     r"aside from", r"apart from", r"other than", r"with the exception of",
                                     r"otherwise", r"yet"))
#: Ends the reach of a cue that comes before a mention ("no effusion. there is ...", "no pneumothorax with a tube").
PRE_CUE_BREAK = _rx(_words(r"there (?:is|are)", r"which", r"that", r"(?:is|are) (?:seen|noted|present|identified)",
                           r"consistent with", r"has developed", r"(?<!compatible )(?<!consistent )with",
                           r"status post", r"s/p", r"following", r"after", r"since"))

# --- cues ---------------------------------------------------------------------------------------------
#: Negated hedges, found (and masked) before negation cues: they make a mention UNCERTAIN.
NEGATED_UNCERTAINTY = _rx(_words(
    r"(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |totally |definitely )?(?:excluded?|ruled? out)",
    r"not (?:entirely |completely |totally )?(?:excluded|ruled out)", r"difficult to (?:entirely |completely )?(?:exclude|rule out)",
    r"no (?:definite )?(?:change|interval change) in (?:\w+ )?(?:possible|probable|questionable)"))
#: Look like negation but are not ("no change in the effusion", "nearly resolved").
PSEUDO_NEGATION = _rx(_words(
    r"no (?:\w+ ){0,2}(?:change|increase|decrease|progression|worsening|improvement)",
    r"not (?:significantly |substantially |appreciably )?(?:changed|increased|decreased|improved|worsened)",
    r"without (?:\w+ ){0,2}(?:change|increase|decrease|progression)",
    r"(?:nearly|partially|almost|incompletely|largely|mostly|partly|not completely|not fully|not entirely) (?:resolved|cleared)",
    r"not only", r"age[\s-]indeterminate", r"to (?:suggest|indicate)", r"no longer (?:enlarged|increased)"))
PRE_NEGATION = _rx(_words(
    r"no", r"without", r"free of", r"negative for", r"absence of", r"absent", r"resolution of", r"resolved",
    r"clear of", r"removal of", r"removed", r"neither", r"nor", r"rather than", r"never", r"ruled out", r"rule out of",
    r"no evidence of", r"not (?:seen|identified|visualized|demonstrated)",
    r"(?:do|does|did) not (?:see|show|demonstrate|identify|reveal)"))
POST_NEGATION = _rx(_words(
    r"not", r"(?:is|are|has|have)?\s*(?:since )?(?:been )?(?:resolved|cleared|removed|withdrawn)",
    r"absent", r"no longer", r"negative", r"none"))
PRE_UNCERTAINTY = _rx(_words(
    r"possible", r"possibly", r"probable", r"probably", r"likely", r"may", r"might", r"could", r"questionable",
    r"question of", r"questioned", r"suspicious for", r"suspicion (?:of|for)", r"suspected", r"suspect",
    r"suggest\w*", r"concern(?:ing)? for", r"worrisome for", r"versus", r"vs", r"borderline", r"equivocal", r"indeterminate", r"differential",
    r"presum\w+", r"favou?re?d?", r"consider", r"r/o", r"rule[\s-]out", r"evaluate for", r"atypical for", r"possibility", r"question",
    r"cannot exclude", r"not excluded", r"uncertain", r"unclear") + r"|\?")
POST_UNCERTAINTY = _rx(_words(
    r"(?:is|are) (?:also )?(?:possible|possibly|suspected|questioned|questionable|likely|probable|suggested)",
    r"versus", r"vs", r"(?:could|may|might) be (?:present|seen)", r"suspected", r"is a possibility", r"can not be excluded")
    + r"|\?")

# --- details --------------------------------------------------------------------------------------------
LATERALITY: tuple[tuple[str, re.Pattern], ...] = (
    ("bilateral", _rx(_words(r"bilateral\w*", r"both", r"bibasilar", r"bibasal", r"biapical",
                             r"left and right", r"right and left"))),
    ("left", _rx(_words(r"left", r"lll", r"lul", r"lingula\w*", r"left-sided"))),
    ("right", _rx(_words(r"right", r"rll", r"rul", r"rml", r"right-sided"))),
)
SIZE: tuple[tuple[str, re.Pattern], ...] = (
    ("moderate", _rx(_words(r"moderate\w*", r"mild to moderate", r"small to moderate", r"small-to-moderate"))),
    ("large", _rx(_words(r"large", r"severe\w*", r"marked\w*", r"massive", r"extensive", r"substantial"))),
    ("small", _rx(_words(r"small", r"tiny", r"trace", r"minimal\w*", r"mild\w*", r"subtle", r"slight\w*"))),
)
#: How far (characters) before a mention, and after it, laterality and size words are read.
DETAIL_CHARS_BEFORE = 40
DETAIL_CHARS_AFTER = 30
