"""Budget study: which training recipe buys the most quality per CPU-minute.

Every arm is the shipped CPU recipe (``src/cxrgen/configs/cxr256-cpu.yaml``: U-ViT-XS, x0 target,
DDPM schedule) with a few ``--set`` overrides (rectified flow, Min-SNR, epsilon target, patch 2,
MaskDiT token dropping, a U-Net), trained from scratch on the same latent cache for the same
budget of process CPU seconds (``--clock cpu``, the default: robust on a shared machine; ``wall``
counts wall-clock seconds) of optimizer steps. At each ``--eval-at`` share of the budget the EMA
model is saved and scored on held-out real images (the clock is paused meanwhile):

- realism: linear (and CNN) C2ST accuracy and SWD between samples of held-out prompts and those
  prompts' real images (``cxrgen.evaluate.c2st`` / ``swd``; docs/evaluation_metrics.md);
- conditioning gain: 1 - held-out denoising loss with the report / with the null prompt
  (``cxrgen.evaluate.conditioning``).

Writes ``OUT/budget.json``, ``OUT/budget.md`` (a table) and ``OUT/budget.png`` (metric against CPU
minutes per arm; skipped with a note when matplotlib is missing). Example (a short pilot)::

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/budget.py --cache /work/scratch/19/cache \\
        --set model.autoencoder.pretrained=src/cxrgen/models/default/autoencoder \\
        --arms ddpm-x0 flow min-snr-x0 maskdit --budget-s 240 --out /work/scratch/19/budget
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrgen.config import ImageConfig, TrainConfig, load_config
from cxrgen.data.images import load_image
from cxrgen.data.manifest import read_manifest
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.conditioning import conditioning_gain
from cxrgen.evaluate.swd import swd
from cxrgen.pipeline import CXRPipeline
from cxrgen.train.loop import optimizer_step
from cxrgen.train.trainer import _loader, prepare_out_dir, save_final_model, setup_run

log = logging.getLogger("budget")

BASE_CONFIG = "src/cxrgen/configs/cxr256-cpu.yaml"
LOG_EVERY = 25  # optimizer steps between progress lines
FLOW = ["model.denoiser.prediction_type=flow_prediction", "objective.kind=flow",
        "objective.timestep_sampling=logit_normal", "sampling.sampler=flow-euler"]
#: Arm name -> overrides on the base recipe (the shipped one: x0 target, DDPM, U-ViT-XS patch 4).
ARMS: dict[str, list[str]] = {
    "ddpm-x0": [],
    "ddpm-eps": ["model.denoiser.prediction_type=epsilon"],
    "flow": FLOW,
    "min-snr-x0": ["objective.loss_weighting=min_snr"],
    "min-snr-eps": ["model.denoiser.prediction_type=epsilon", "objective.loss_weighting=min_snr"],
    "maskdit": ["objective.mask_ratio=0.5", "objective.masked_fraction=0.9"],
    "flow-maskdit": [*FLOW, "objective.mask_ratio=0.5", "objective.masked_fraction=0.9"],
    "uvit-p2": ["model.denoiser.kwargs.patch_size=2"],
    "unet": ["model.denoiser.name=unet-xs"],
}
#: Columns of the markdown table (lower is better except cond_gain).
COLUMNS = ("arm", "cpu_min", "steps", "images_seen", "c2st_linear", "c2st_cnn", "swd", "cond_gain")


@dataclass(frozen=True)
class HeldOut:
    """Held-out real images (N, 1, H, W) in [-1, 1] and their report prompts."""

    images: torch.Tensor
    prompts: list[str]


def heldout_set(manifests: list[str], n: int, size: int, split: str, seed: int) -> HeldOut:
    """``n`` rows of ``split`` spread evenly over the manifests (a seeded choice), images at ``size`` px."""
    rng = np.random.default_rng(seed)
    paths, prompts = [], []
    for i, manifest in enumerate(manifests):
        table = read_manifest(manifest)
        rows = table[table["split"] == split]
        take = n // len(manifests) + (1 if i < n % len(manifests) else 0)
        picked = rows.iloc[np.sort(rng.choice(len(rows), min(take, len(rows)), replace=False))]
        root = Path(manifest).parent
        paths += [p if Path(p).is_absolute() else str(root / p) for p in picked["image_path"].astype(str)]
        prompts += [str(p) for p in picked["prompt"]]
    images = torch.stack([load_image(p, ImageConfig(size=size)) for p in paths])  # (N, 1, H, W)
    return HeldOut(images, prompts)


def score(model_dir: Path, heldout: HeldOut, steps: int, seed: int, c2st_epochs: int) -> dict[str, Any]:
    """Realism (C2ST, SWD) of samples of the held-out prompts against their real images, and the conditioning gain."""
    pipe = CXRPipeline.from_pretrained(model_dir)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(heldout.prompts))]
    start = time.perf_counter()
    images = pipe(heldout.prompts, num_inference_steps=steps, generator=generators, progress=False).images
    sample_s = time.perf_counter() - start
    folds = min(5, len(heldout.prompts) // 2)
    real = c2st(heldout.images, images, C2STSettings(folds=folds, epochs=c2st_epochs),
                torch.Generator().manual_seed(seed))
    dist = swd(heldout.images, images, generator=torch.Generator().manual_seed(seed))
    gain = conditioning_gain(pipe, heldout.images, heldout.prompts, n_timesteps=4, seed=seed)
    return {"c2st_linear": real["linear"], "c2st_linear_ci": real["linear_ci"], "c2st_cnn": real["cnn"],
            "swd": dist["mean"], "swd_per_level": dist["per_level"], "cond_gain": gain["gain"],
            "loss_text": gain["loss_text"], "loss_null": gain["loss_null"], "n": len(heldout.prompts),
            "sampler": pipe.sampling.sampler, "sample_steps": steps, "sample_s_per_image": sample_s / len(images)}


def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def train_arm(cfg: TrainConfig, out: Path, budget_s: float, eval_at: list[float], clock: str,
              evaluate: Callable[[Path], dict[str, Any]]) -> list[dict[str, Any]]:
    """Optimizer steps until each ``eval_at`` share of ``budget_s`` (clock seconds), then save + ``evaluate``."""
    prepare_out_dir(out, None, overwrite=True)
    now, points = _clock(clock), []
    with torch.random.fork_rng(devices=[]):  # the run owns the global RNG, as train() does
        run, data = setup_run(cfg, out)
        torch.manual_seed(cfg.seed)
        run.dataset_size = len(data)
        run.batches = iter(_loader(cfg, data, run.accelerator, 0))
        spent, wall, last = 0.0, 0.0, {}
        for share in sorted(eval_at):
            while spent < share * budget_s:
                t0, w0 = now(), time.perf_counter()
                last = optimizer_step(run)
                spent, wall = spent + now() - t0, wall + time.perf_counter() - w0
                if run.step % LOG_EVERY == 0:
                    log.info("%s step %d: loss %.4f, %.0f of %.0f s", out.name, run.step, last["loss"], spent,
                             budget_s)
            model = save_final_model(run)
            point = {"budget_share": share, "clock_s": spent, "cpu_min": spent / 60, "wall_s": wall,
                     "steps": run.step, "images_seen": run.consumed, "loss": last.get("loss")}
            point |= evaluate(model)
            log.info("%s at %.1f min: %s", out.name, spent / 60, {k: point[k] for k in COLUMNS[2:] if k in point})
            points.append(point)
    return points


def arm_config(base: str, arm: str, common: list[str], out: Path) -> TrainConfig:
    """The base recipe with the arm's and the common overrides; logs each step, never stops on steps."""
    run_fields = [f"out_dir={out}", "steps=100000000", "checkpoint_every=100000000", "sample_every=0",
                  "progress=false", "log_every=1"]
    return load_config(TrainConfig, base, [*ARMS[arm], *common, *run_fields])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table of COLUMNS (numbers rounded)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> str | None:
    """C2ST (linear), SWD and conditioning gain against CPU minutes per arm; a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    curves = {arm: points for arm, points in results.items()
              if points and all(p.get("cpu_min") is not None for p in points)}  # a reference model has no minutes
    if not curves:
        return "no trained arm: no plot"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arm, points in curves.items():
        minutes = [p["cpu_min"] for p in points]
        for ax, key in zip(axes, ("c2st_linear", "swd", "cond_gain"), strict=True):
            ax.plot(minutes, [p[key] for p in points], marker="o", label=arm)
            ax.set_xlabel("CPU minutes of training")
            ax.set_title({"c2st_linear": "C2ST linear (0.5 best)", "swd": "SWD x1e3 (lower better)",
                          "cond_gain": "conditioning gain (higher better)"}[key])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=BASE_CONFIG, help="the base training recipe (YAML)")
    p.add_argument("--reference-model", type=Path, help="also score this model folder (e.g. src/cxrgen/models/default)")
    p.add_argument("--arms", nargs="*", default=["ddpm-x0", "flow", "min-snr-x0", "maskdit"], choices=list(ARMS))
    p.add_argument("--report-only", action="store_true", help="only re-write table and plot from OUT/budget.json")
    p.add_argument("--budget-s", type=float, default=1800.0, help="training seconds per arm (the full study: 1800, 5400)")
    p.add_argument("--eval-at", default="0.5,1.0", help="shares of the budget at which each arm is scored")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--cache", help="latent cache folder (cache_dir); None: the config's")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="override for every arm, a.b=v")
    p.add_argument("--heldout-manifests", nargs="*", help="manifests of the held-out rows; default: the config's")
    p.add_argument("--heldout-split", default="test")
    p.add_argument("--n-eval", type=int, default=64, help="held-out prompts (and real images) per evaluation")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--c2st-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train and score every arm; write budget.json, budget.md and budget.png under --out."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report_only:
        return report_only(args.out)
    common = list(args.overrides) + ([f"cache_dir={args.cache}"] if args.cache else [])
    args.out.mkdir(parents=True, exist_ok=True)
    first = arm_config(args.config, (args.arms or ["ddpm-x0"])[0], common, args.out / "_config")
    manifests = args.heldout_manifests or list(first.manifests)
    heldout = heldout_set(manifests, args.n_eval, first.model.image_size, args.heldout_split, args.seed)
    shares = [float(s) for s in args.eval_at.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    if args.reference_model:  # an existing model (e.g. the shipped v1) scored with the same protocol
        results["reference"] = [{"model": str(args.reference_model),
                                 **score(args.reference_model, heldout, args.sample_steps, args.seed, args.c2st_epochs)}]
    for arm in args.arms:
        cfg = arm_config(args.config, arm, common, args.out / arm)
        results[arm] = train_arm(cfg, args.out / arm, args.budget_s, shares, args.clock,
                                 lambda model: score(model, heldout, args.sample_steps, args.seed, args.c2st_epochs))
        (args.out / "budget.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "arms": results}, indent=2) + "\n")
    return write_report({k: str(v) for k, v in vars(args).items()}, results, args.out)


def write_report(run_args: dict[str, str], results: dict[str, list[dict[str, Any]]], out: Path) -> dict[str, Any]:
    """budget.json, budget.md and budget.png of the arms in ``results`` (their last evaluation in the table)."""
    rows = [{"arm": arm, **points[-1]} for arm, points in results.items() if points]
    note = plot(results, out / "budget.png")
    table = markdown_table(rows) + (f"\n{note}\n" if note else "")
    (out / "budget.md").write_text(table, encoding="utf-8")
    report = {"args": run_args, "arms": results, "table": rows, "plot_note": note}
    (out / "budget.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table)  # noqa: T201 - a benchmark script's result
    return report


def report_only(out: Path) -> dict[str, Any]:
    """Re-write the table and plot from OUT/budget.json (e.g. of a study stopped after some arms)."""
    saved = json.loads((out / "budget.json").read_text(encoding="utf-8"))
    return write_report(saved["args"], saved["arms"], out)


if __name__ == "__main__":
    main()
