"""Per-trunk gradient norms of CoDi's stage-1 loss: does one trunk's gradient set the common clip of the others?

    .venv/bin/python benchmarks/codi_grad_norms.py --model OUT/model --cache OUT --batches 30 [--fresh]

``--cache``: a ``codi_single`` run folder holding its latent and sentence-vector caches
(``joint_latents.safetensors``, ``codi_context.safetensors``); ``--fresh`` re-initialises the model's
architecture (the start of training). Prints the mean gradient norm of each trunk and of all of them, the
share of batches where the global norm-1 clip is active, and the frontal trunk's step under the global clip
relative to a clip of its own (``codi.clip_per_trunk``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cxrgen.config import ScheduleConfig
from cxrgen.pipelines.codi import CodiPipeline
from cxrgen.samplers import training_scheduler
from cxrgen.train.codi import CONTEXT_CACHE, single_loss
from cxrgen.train.joint import LATENT_CACHE


def grad_norms(model: torch.nn.Module, latents: dict[str, torch.Tensor], batches: int, batch_size: int = 16,
               seed: int = 0) -> list[dict[str, float]]:
    """Per batch: each trunk's gradient norm of ``single_loss`` (cond drop 0.1) and the norm of all of them."""
    sched = training_scheduler(ScheduleConfig(beta_schedule="squaredcos_cap_v2"), model.config.prediction_type)
    gen, rows = torch.Generator().manual_seed(seed), []
    for _ in range(batches):
        idx = torch.randint(0, latents["frontal"].shape[0], (batch_size,), generator=gen)  # (B,)
        loss, _ = single_loss(model, sched, {k: v[idx] for k, v in latents.items()}, 0.1, gen)
        model.zero_grad(set_to_none=True)
        loss.backward()
        norms = {m: float(torch.linalg.vector_norm(torch.stack(
            [p.grad.norm() for p in trunk.parameters() if p.grad is not None]))) for m, trunk in model.trunks.items()}
        rows.append({**norms, "total": sum(v * v for v in norms.values()) ** 0.5})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a CoDi model folder (cxrgen train-multiview's OUT/model)")
    ap.add_argument("--cache", required=True, help="the codi_single run folder holding the latent caches")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--fresh", action="store_true", help="re-initialise the weights (the start of training)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = CodiPipeline.from_pretrained(args.model).denoiser.requires_grad_(True).train()
    if args.fresh:
        model._reset(torch.Generator().manual_seed(0))
    cache = Path(args.cache)
    latents = {**load_file(str(cache / LATENT_CACHE)), **load_file(str(cache / CONTEXT_CACHE))}
    rows = grad_norms(model, latents, args.batches)
    ratio = [min(1.0, 1 / r["total"]) / min(1.0, 1 / r["frontal"]) for r in rows]
    print(json.dumps({"model": args.model, "fresh": args.fresh, "batches": len(rows),
                      "mean_norm": {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]},
                      "share_global_clip_active": sum(r["total"] > 1 for r in rows) / len(rows),
                      "frontal_step_global_over_own": {"mean": sum(ratio) / len(ratio), "min": min(ratio),
                                                       "max": max(ratio)}}, indent=1))


if __name__ == "__main__":
    main()
