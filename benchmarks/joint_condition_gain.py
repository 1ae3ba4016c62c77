"""Does an any-to-any model (either arm) use its conditions? Lateral noise-prediction MSE with each condition given or absent.

    .venv/bin/python benchmarks/joint_condition_gain.py --model out/joint/model --latents out/joint/joint_latents.safetensors

On the first ``--n`` encoded training triplets, the lateral latent is noised to step s and the frontal /
report latents are given (model time 0), absent (noise at T) or shuffled across cases; a model that
reads a condition predicts the lateral's noise better when it is given than when it is absent or shuffled.
"""

from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import load_file

from cxrgen.pipelines import load_multiview_pipeline


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--latents", required=True, help="joint_latents.safetensors written by train-multiview")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="+", default=[200, 500, 800])
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = load_multiview_pipeline(args.model)  # either arm (joint U-ViT or CoDi)
    den, sched = pipe.denoiser, pipe.scheduler
    x = {m: v[:args.n] for m, v in load_file(args.latents).items()}
    gen, absent, out = torch.Generator().manual_seed(0), den.absent_time, {}
    for s in args.steps:
        noise = {m: torch.randn(x[m].shape, generator=gen) for m in x}
        noisy = sched.add_noise(x["lateral"], noise["lateral"], torch.full((len(x["lateral"]),), s))
        cases = {"frontal+report": (x["frontal"], 0, x["report"], 0), "frontal": (x["frontal"], 0, noise["report"], absent),
                 "report": (noise["frontal"], absent, x["report"], 0),
                 "none": (noise["frontal"], absent, noise["report"], absent),
                 "frontal shuffled": (x["frontal"].roll(1, 0), 0, noise["report"], absent)}
        out[s] = {}
        for name, (f, tf, r, tr) in cases.items():
            pred = den({"frontal": f, "lateral": noisy, "report": r}, {"frontal": tf, "lateral": s + 1, "report": tr})
            out[s][name] = round(float((pred["lateral"] - noise["lateral"]).pow(2).mean()), 5)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
