"""The shared adult COVID-19 set: images with clinical notes from publications."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrgen.config import DataConfig
from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import NEGATIVE, POSITIVE, ReadSummary
from cxrgen.data.prompts import fit_sentences, split_sentences, token_counter
from cxrgen.data.readers.base import Collection, read_table, require_path
from cxrgen.data.reports import clean_text

VIEWS = {"PA": "PA", "AP": "AP", "AP SUPINE": "AP SUPINE", "L": "LATERAL", "?": "UNKNOWN"}
VIEW_WORDS = {"PA": "PA", "AP": "AP", "AP SUPINE": "Supine AP", "LATERAL": "Lateral", "UNKNOWN": ""}
#: Source findings that are pneumonias (infectious or lipoid); "COVID-19, ARDS" counts by its parts.
PNEUMONIAS = frozenset({"COVID-19", "SARS", "Pneumocystis", "Pneumonia", "Streptococcus",
                        "Mycoplasma Bacterial Pneumonia", "Klebsiella", "Legionella", "Varicella",
                        "E.Coli", "Lipoid", "Influenza"})
UNLABELLED = "todo"
# a sentence about the radiograph (not about CT alone) is kept for the prompt and the labeler;
# bare 'lung' or 'lobe' is not enough ("a history of lung cancer")
_IMAGING = re.compile(r"radiograph|x-?ray|\bcxr\b|chest film|opacit|consolidat|infiltrat|effusion|"
                      r"ground[- ]glass|pneumothorax|cardiomegal|atelecta|nodul|interstitial|haz[ey]|"
                      r"pulmonary edema|airspace|air-space|reticul|cardiac silhouette", re.I)
_CT = re.compile(r"\bCT\b|computed tomograph", re.I)
_PLAIN_FILM = re.compile(r"radiograph|x-?ray|\bcxr\b|chest film", re.I)


def imaging_sentences(notes: str) -> list[str]:
    """Sentences of clinical notes that describe the chest radiograph (CT-only sentences dropped)."""
    kept = []
    for sentence in split_sentences(clean_text(notes)):
        if not _IMAGING.search(sentence):
            continue
        if _CT.search(sentence) and not _PLAIN_FILM.search(sentence):
            continue
        kept.append(sentence if sentence.endswith((".", "!", "?")) else sentence + ".")
    return kept


def covid_prompt(view: str, finding: str, sentences: list[str], count, max_tokens: int) -> str:
    """'<view> chest radiograph. <finding>. <imaging sentences that fit the token limit>'."""
    head = f"{VIEW_WORDS.get(view, '')} chest radiograph.".strip()
    head = head[0].upper() + head[1:]  # "chest" -> "Chest" when the view is unknown
    if finding and finding != UNLABELLED:
        head += " No finding." if finding == "No Finding" else f" {finding}."
    body = fit_sentences(sentences, lambda s: count(head + " " + s), max_tokens)
    return f"{head} {body}".strip()


def finding_labels(finding: str) -> dict[str, float]:
    """CheXpert labels that the source's diagnosis implies (Pneumonia, No Finding)."""
    parts = {p.strip() for p in finding.split(",")}
    if parts & PNEUMONIAS:
        return {"Pneumonia": POSITIVE, "No Finding": NEGATIVE}
    if "No Finding" in parts:
        return {"No Finding": POSITIVE}
    return {}


def read_covid(root: str | Path, cfg: DataConfig, summary: ReadSummary) -> Collection:
    """Read ``covid-cxr-256``: prompts from view, diagnosis and the notes' imaging sentences."""
    root = require_path(Path(root), "covid-cxr-256 folder", "Point at the folder with metadata.csv.")
    meta = read_table(require_path(root / "metadata.csv", "metadata.csv", "The folder must hold metadata.csv."),
                      ["image", "patient_id", "view", "finding", "clinical_notes"], "covid metadata")
    count = token_counter(cfg.prompt)
    rows = []
    for rec in meta.to_dict("records"):
        view = VIEWS.get(rec["view"].strip().upper(), "UNKNOWN")
        finding = rec["finding"].strip()
        sentences = imaging_sentences(rec["clinical_notes"])
        findings_text = " ".join(sentences)
        result = label_report(findings_text) if findings_text else None
        labels = result.as_row() if result else {}
        labels.update(finding_labels(finding))
        rows.append({
            "source": "covid",
            "image_path": str(root / rec["image"]),
            "study_id": Path(rec["image"]).stem,
            "patient_id": rec["patient_id"],
            "view": view,
            "prompt": covid_prompt(view, finding, sentences, count, cfg.prompt.max_tokens),
            "report": clean_text(rec["clinical_notes"]),
            "findings": findings_text,
            "finding": finding,
            **{k: rec.get(k, "") for k in ("sex", "age", "license", "doi")},
            **labels,
        })
    df = pd.DataFrame(rows)
    summary.notes.append(f"{int((meta['clinical_notes'].str.strip() == '').sum())} image(s) without "
                         "clinical notes: prompt from view and diagnosis only")
    return Collection(rows=df, labelled=True, has_images=True, official_split=False)
