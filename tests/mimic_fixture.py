"""Builds a tiny fake MIMIC-CXR-JPG tree with PhysioNet's exact layout, for reader tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# subject_id, study_id, [(dicom_id, ViewPosition, split)], report text, CheXpert labels
STUDIES = [
    ("10000032", "50414267", [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", "train"),
                              ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train")],
     """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
""", {"No Finding": 1.0}),
    ("10000032", "53189527", [("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP", "train")],
     """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old woman with cirrhosis, dyspnea.

 FINDINGS:
 Moderate left pleural effusion with adjacent atelectasis. Heart size is
 normal.

 IMPRESSION:
 Moderate left pleural effusion.  Possible left lower lobe pneumonia.
""", {"Pleural Effusion": 1.0, "Atelectasis": 1.0, "Pneumonia": -1.0, "Cardiomegaly": 0.0}),
    ("10000764", "57375967", [("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", "validate")],
     """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 FINDINGS:
 Right internal jugular central venous catheter tip in the SVC. Small right
 pneumothorax.

 IMPRESSION:
 Small right apical pneumothorax after line placement.
""", {"Pneumothorax": 1.0, "Support Devices": 1.0}),
    ("11000011", "51000011", [("aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee", "PA", "test")],
     """                                 FINAL REPORT
 FINDINGS:
 Enlarged cardiac silhouette. Mild pulmonary edema.

 IMPRESSION:
 Cardiomegaly with mild pulmonary edema.
""", {"Cardiomegaly": 1.0, "Edema": 1.0}),
]
LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
          "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
          "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")


def _write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        df.to_csv(fh, index=False)


def make_image(seed: int, size: int = 48) -> np.ndarray:
    """A uint8 image whose left half is darker than its right half (so a flip is detectable)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, size=(size, size + 8)).astype(np.uint8)
    img[:, (size + 8) // 2:] += 150
    return img


def build_mimic_tree(root: Path, gz: bool = True) -> Path:
    """Write the fake tree under ``root`` and return it."""
    meta, split, chexpert = [], [], []
    for i, (subject, study, images, report, labels) in enumerate(STUDIES):
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        for j, (dicom, view, sp) in enumerate(images):
            Image.fromarray(make_image(10 * i + j)).save(study_dir / f"{dicom}.jpg", quality=95)
            meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": view, "Rows": 48, "Columns": 56})
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": sp})
        report_path = root / "mimic-cxr-reports" / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report, encoding="utf-8")
        chexpert.append({"subject_id": subject, "study_id": study,
                         **{name: labels.get(name, "") for name in LABELS}})
    suffix = ".csv.gz" if gz else ".csv"
    write = _write_csv_gz if gz else (lambda df, p: df.to_csv(p, index=False))
    write(pd.DataFrame(meta), root / f"mimic-cxr-2.0.0-metadata{suffix}")
    write(pd.DataFrame(split), root / f"mimic-cxr-2.0.0-split{suffix}")
    write(pd.DataFrame(chexpert), root / f"mimic-cxr-2.0.0-chexpert{suffix}")
    return root
