"""Report-derived image targets for the aligned stage's ``label_weight`` loss.

InfoNCE aligns an image with its whole report, so a finding that rarely tells two reports of a batch apart (a small
nodule beside an effusion) may never shape the image towers. The cxrgen labeler reads each training report's
CheXpert observations and their sides; each image tower then also predicts, through a linear head used only in
training, for every observation: stated positive or uncertain, stated on the left, stated on the right (a bilateral
finding counts on both sides). The targets come from the report, as the contrastive pairs do, so they exist for
any report-image data, not only the twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cxrgen.data.labeler import label_report
from cxrgen.data.manifest import CHEXPERT_LABELS, POSITIVE, UNCERTAIN

#: target columns per observation: present, left, right
PARTS: tuple[str, ...] = ("present", "left", "right")


def report_targets(reports: Sequence[str]) -> torch.Tensor:
    """(N, 3 x 14) float targets of ``reports``: per CheXpert observation present / on the left / on the right."""
    out = torch.zeros(len(reports), len(CHEXPERT_LABELS), len(PARTS))
    for i, text in enumerate(reports):
        result = label_report(text)
        for j, name in enumerate(CHEXPERT_LABELS):
            if result.labels.get(name) not in (POSITIVE, UNCERTAIN):
                continue
            side = result.details.get(name, {}).get("laterality")
            out[i, j, 0] = 1.0
            out[i, j, 1] = float(side in ("left", "bilateral"))
            out[i, j, 2] = float(side in ("right", "bilateral"))
    return out.flatten(1)


def target_names() -> list[str]:
    """The names of the columns of :func:`report_targets`."""
    return [f"{name}:{part}" for name in CHEXPERT_LABELS for part in PARTS]
