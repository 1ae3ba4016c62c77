"""What the aligned frontal tower knows of each twin finding: linear probes on its frozen feature map.

    .venv/bin/python tools/probe_aligned_findings.py ALIGNED_DIR TWIN_DIR [--train 2000] [--test 400]
    .venv/bin/python tools/probe_aligned_findings.py --contrast [--size 64]

CoDi's report trunk reads a given frontal only through this tower (``codi.view_prompt_encoder: aligned``), so a
finding the tower does not encode cannot be reported from the image. Per finding (absent / left / right /
unsided), a softmax regression on the standardised features of the first ``--train`` `train` cases, pooled to 4 x 4
(what the view prompt reads) and to 1 x 1 (the global average), is scored on the first ``--test`` `test` cases
beside the majority class. ``--contrast`` instead renders one noise-free twin case at ``--size`` px with a right
upper lobe nodule of 15, 25 and 38 mm and prints how far each changes the PA image from the case without it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.nn import functional as F

from cxrgen.data.twin_triplets import load_views, read_twin_triplets
from cxrgen.evaluate.twin_report import truth_findings
from cxrgen.multiview.aligned import AlignedModel

CLASSES = {None: 0, "left": 1, "right": 2, "": 3, "bilateral": 3}
FINDINGS = ("nodule", "pneumothorax", "effusion", "consolidation")


def features(model: AlignedModel, twin: str, split: str, n: int) -> tuple[torch.Tensor, list[dict]]:
    """The frontal tower's last feature maps (N, C, s, s) of the first ``n`` cases of ``split``, and their truths."""
    table = read_twin_triplets(twin)
    cases = table[table["split"] == split].reset_index(drop=True).iloc[:n]
    frontal, _ = load_views(cases, int(model.encoders.config.image_size))
    with torch.no_grad():
        maps = torch.cat([model.encoders.frontal.body(frontal[i:i + 256]) for i in range(0, len(frontal), 256)])
    return maps, [truth_findings(r) for r in cases.to_dict("records")]


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
          steps: int = 300) -> tuple[float, float]:
    """Test accuracy of a softmax regression (Adam, weight decay) on standardised features, and the majority's."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(x_train.shape[1], int(max(y_train.max(), y_test.max())) + 1)
    opt = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((head(x_test).argmax(1) == y_test).float().mean())
    return accuracy, float(max((y_test == c).float().mean() for c in y_test.unique()))


def contrast(size: int) -> None:
    """Print the PA change a right upper lobe nodule of each size makes on a noise-free twin case."""
    from cxrgen.twin.case import render_case
    from cxrgen.twin.findings import TwinFindings
    from cxrgen.twin.render import Variation

    base = render_case(TwinFindings(), Variation(), size, np.random.default_rng(0)).pa
    for mm in (15.0, 25.0, 38.0):
        pa = render_case(TwinFindings(nodule_lobe="right_upper", nodule_mm=mm), Variation(), size,
                         np.random.default_rng(0)).pa
        diff = np.abs(pa - base)
        print(f"{mm:.0f} mm nodule at {size} px: largest change {diff.max():.3f} (image in [0, 1]), "
              f"{int((diff > 0.02).sum())} pixels changed by > 0.02")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("aligned", nargs="?", help="an aligned stage's model folder (OUT/aligned)")
    parser.add_argument("twin", nargs="?", help="a `cxrgen twin` folder")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--contrast", action="store_true", help="the nodules' contrast instead of the probes")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.contrast:
        contrast(args.size)
        return
    if not (args.aligned and args.twin):
        parser.error("give ALIGNED_DIR and TWIN_DIR (or --contrast)")
    model = AlignedModel.from_pretrained(args.aligned)
    x_train, t_train = features(model, args.twin, "train", args.train)
    x_test, t_test = features(model, args.twin, "test", args.test)
    print(f"frontal tower features {tuple(x_train.shape[1:])}; {len(t_train)} train, {len(t_test)} test cases")
    for finding in FINDINGS:
        y_train = torch.tensor([CLASSES[t[finding]] for t in t_train])
        y_test = torch.tensor([CLASSES[t[finding]] for t in t_test])
        for grid in (4, 1):
            pooled = [F.adaptive_avg_pool2d(x, grid).flatten(1) for x in (x_train, x_test)]
            accuracy, majority = probe(pooled[0], y_train, pooled[1], y_test)
            print(f"{finding} (absent / left / right) from {grid} x {grid} features: test accuracy {accuracy:.3f}, "
                  f"majority class {majority:.3f}")


if __name__ == "__main__":
    main()
