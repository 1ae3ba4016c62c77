"""Twin scores and compute of a joint U-ViT (MultiViewPipeline) on held-out twin cases, as JSON.

    .venv/bin/python benchmarks/joint_twin.py --model out/joint/model --twin out/twin64 --n 60 --json out/joint_eval.json

Scores (``cxrgen.evaluate.multiview.score_multiview``, as ``cxrgen evaluate-multiview``): report -> frontal
laterality, report -> lateral effusion presence, frontal -> lateral coherence and its real-pair ceiling,
frontal -> report, the deliberate mistakes and the marks, and the parameters and GFLOPs of one frontal +
lateral pair generated from a report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from cxrgen.evaluate.joint_twin import joint_cost
from cxrgen.evaluate.multiview import check_marks, score_multiview
from cxrgen.pipelines import load_multiview_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="MultiViewPipeline or CodiPipeline folder (train-multiview stage joint / codi_bridge)")
    p.add_argument("--twin", required=True, help="twin folder (cxrgen twin) holding the test split")
    p.add_argument("--n", type=int, default=60, help="held-out cases")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--sampler", help="ddpm | ddim | pndm | dpm++ | euler (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale per given modality (default: the model's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_multiview_pipeline(args.model)  # the joint U-ViT or the CoDi arm
    given = {"steps": args.steps, "guidance_scale": args.guidance, "sampler": args.sampler}
    pipe.sampling = dataclasses.replace(pipe.sampling, **{k: v for k, v in given.items() if v is not None})
    start = time.perf_counter()
    scores, _ = score_multiview(pipe, args.twin, n=args.n)
    scores.update(check_marks(scores))
    scores["seconds"] = round(time.perf_counter() - start, 1)
    scores["cost"] = joint_cost(pipe)
    Path(args.json).write_text(json.dumps(scores, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(scores, indent=2, default=str))


if __name__ == "__main__":
    main()
