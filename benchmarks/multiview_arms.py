"""Compute of the two any-to-any arms (joint U-ViT, CoDi XR's three bridged models), as JSON.

    .venv/bin/python benchmarks/multiview_arms.py --model joint=out/joint/model --model codi=out/codi_bridge/model \
        --json out/arms_cost.json

Per arm: parameters (denoiser, of which trained in the last stage, image autoencoder), GFLOPs of one
generated triplet (``->frontal+lateral+report``: every modality generated jointly, one pass per step) and
of one frontal + lateral pair from a report with guidance (2 passes per step), counted by torch's
FlopCounterMode (multiply-add = 2 FLOPs; the CoDi arm runs only the generated modalities' denoisers),
and the CPU seconds of one training step at the given batch on one thread (mean of ``--steps`` steps after
one warm-up, on random latents of the model's shapes). The twin scores come from ``benchmarks/joint_twin.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from cxrgen.compute import count_flops
from cxrgen.denoisers.codi import CodiXR
from cxrgen.pipelines import MultiViewPipeline, load_multiview_pipeline
from cxrgen.train.codi import single_loss
from cxrgen.train.joint_loss import joint_loss


def generation_gflops(pipe: MultiViewPipeline, generated: tuple[str, ...], passes: int) -> float:
    """GFLOPs of one sample of ``generated`` with the pipeline's steps, ``passes`` denoiser calls per step."""
    den = pipe.denoiser
    lat = {m: torch.zeros(1, *den.latent_shape(m)) for m in den.modalities}
    times = {m: torch.ones(1, dtype=torch.long) for m in den.modalities}
    forward = count_flops(lambda: pipe._predict(lat, times, generated))  # the pipeline's own denoiser call
    views = [m for m in generated if m != "report"]
    decode = count_flops(lambda: pipe.autoencoder.decode(torch.zeros(1, *den.latent_shape("frontal"))))
    return (forward * pipe.sampling.steps * passes + decode * len(views)) / 1e9


def step_cpu_seconds(pipe: MultiViewPipeline, batch: int, steps: int) -> dict[str, float]:
    """CPU seconds per training step (forward, backward, AdamW) of each training stage of the arm."""
    den, sched = pipe.denoiser, pipe.scheduler
    gen = torch.Generator().manual_seed(0)
    clean = {m: torch.randn(batch, *den.latent_shape(m), generator=gen) for m in den.modalities}
    if isinstance(den, CodiXR):
        stages = {"codi_single": (lambda: single_loss(den, sched, clean, 0.1, gen)[0], den.trunk_parameters()),
                  "codi_bridge": (lambda: joint_loss(den, sched, clean, 0.25, 0.15, gen)[0], den.bridge_parameters())}
    else:
        stages = {"joint": (lambda: joint_loss(den, sched, clean, 0.25, 0.15, gen)[0], list(den.parameters()))}
    out = {}
    for name, (loss_fn, params) in stages.items():
        den.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-4)
        for k in range(steps + 1):
            if k == 1:
                start = time.process_time()
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        out[name] = round((time.process_time() - start) / steps, 3)
    return out


def arm_cost(folder: str, batch: int, steps: int) -> dict[str, Any]:
    """Parameters, generation GFLOPs and training-step CPU time of the model in ``folder``."""
    pipe = load_multiview_pipeline(folder)
    den = pipe.denoiser
    bridges = sum(p.numel() for p in den.bridge_parameters()) if isinstance(den, CodiXR) else None
    return {"pipeline": type(pipe).__name__, "denoiser_params": sum(p.numel() for p in den.parameters()),
            "bridge_params": bridges, "autoencoder_params": sum(p.numel() for p in pipe.autoencoder.parameters()),
            "sampling_steps": pipe.sampling.steps,
            "gflops_triplet_joint": round(generation_gflops(pipe, ("frontal", "lateral", "report"), 1), 3),
            "gflops_pair_from_report_guided": round(generation_gflops(pipe, ("frontal", "lateral"), 2), 3),
            "train_cpu_s_per_step": step_cpu_seconds(pipe, batch, steps), "batch": batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a saved any-to-any model")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per stage")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    arms = dict(item.split("=", 1) for item in args.model)
    result = {name: arm_cost(folder, args.batch, args.steps) for name, folder in arms.items()}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
