"""Joint report -> frontal + lateral on held-out twin cases: each view against the truth, and the two views
against each other, for views generated together (one call) and separately (two calls, other noise).

    .venv/bin/python benchmarks/codi_joint.py --model src/cxrgen/models/twin-codi --twin out/twin64 --n 60 --json out/joint.json

Scores (the twin's measurers, as ``cxrgen evaluate-multiview``): the frontal's laterality, the lateral's
per-field agreement with the truth (``coherence``) and its effusion presence, and ``views_agree``: the share
of cases whose frontal and lateral state the same effusion presence (the pair is coherent with itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cxrgen.data.twin_triplets import read_twin_triplets
from cxrgen.evaluate.joint_twin import joint_pair_scores, truth_of
from cxrgen.evaluate.multiview import run_modes
from cxrgen.pipelines import load_multiview_pipeline


def pair_scores(frontal: torch.Tensor, lateral: torch.Tensor, rows: list[dict], size: int) -> dict[str, float]:
    """Laterality of the frontals, the laterals' agreement with the truth, and the views' agreement."""
    return joint_pair_scores(frontal, lateral, [truth_of(r) for r in rows], [float(r["ctr"]) for r in rows], size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="any-to-any model folder (a mode report->frontal+lateral)")
    p.add_argument("--twin", required=True, help="twin folder (cxrgen twin) holding the split")
    p.add_argument("--n", type=int, default=60, help="held-out cases")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_multiview_pipeline(args.model)
    table = read_twin_triplets(args.twin)
    rows = table[table["split"] == args.split].iloc[:args.n].to_dict("records")
    size = int(json.loads((Path(args.twin) / "twin.json").read_text(encoding="utf-8"))["size"])
    reports = {"report": [r["report"] for r in rows]}
    joint = run_modes(pipe, reports, ["frontal", "lateral"], len(rows), 16, 0, False)
    alone_f = run_modes(pipe, reports, ["frontal"], len(rows), 16, 1, False)["frontal"]
    alone_l = run_modes(pipe, reports, ["lateral"], len(rows), 16, 2, False)["lateral"]
    result = {"n": len(rows), "split": args.split, "model": args.model,
              "joint": pair_scores(joint["frontal"], joint["lateral"], rows, size),
              "separate": pair_scores(alone_f, alone_l, rows, size)}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
