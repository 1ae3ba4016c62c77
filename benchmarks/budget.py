"""Budget study: which training recipe buys the most quality per CPU-minute.

Every arm is the shipped CPU recipe (``src/cxrgen/configs/cxr256-cpu.yaml``: U-ViT-XS, x0 target,
DDPM schedule) with a few ``--set`` overrides (rectified flow, Min-SNR, epsilon target, patch 2,
MaskDiT token dropping, a U-Net, a 128 px base model), trained from scratch on the same latent
cache for the same budget of process CPU seconds (``--clock cpu``, the default: robust on a shared
machine; ``wall`` counts wall-clock seconds, ``steps`` optimizer steps) of optimizer steps. At each
``--eval-at`` share of the budget the EMA model and a full checkpoint are saved and the model is
scored on held-out real images (the clock is paused meanwhile; the scoring cost is recorded):

- realism: linear (and CNN) C2ST accuracy and SWD between samples of held-out prompts and those
  prompts' real images (``cxrgen.evaluate.c2st`` / ``swd``; docs/evaluation_metrics.md);
- conditioning gain: 1 - held-out denoising loss with the report / with the null prompt
  (``cxrgen.evaluate.conditioning``).

Each arm keeps its record in ``OUT/ARM/arm.json`` (every point and every stage; budget_arm.py), so a
study can be taken to a larger budget later: ``--continue --budget-s 1800`` trains every recorded arm
on from its last checkpoint and appends to its curve. Writes ``OUT/budget.json`` (all records),
``OUT/budget.md`` (tables) and ``OUT/budget.png`` (metrics against CPU minutes of the best two arms by
final SWD, or ``--plot-arms``). Example (see docs/budget_study.md for the study's commands)::

    PYTHONPATH=src OMP_NUM_THREADS=1 nice python benchmarks/budget.py --cache runs/v2/cache \\
        --set model.autoencoder.pretrained=src/cxrgen/models/default/autoencoder \\
        --arms ddpm-x0 flow --budget-s 720 --eval-at 0.25,0.5,1.0 --out runs/budget
    # a later day: the same arms to 30 CPU-minutes, scored at 20 and 30
    ... --arms ddpm-x0 flow --continue --budget-s 1800 --eval-at 0.67,1.0 --out runs/budget
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from budget_arm import config_dict, new_record, read_record, train_arm, utc_now, write_record

from cxrgen.config import ImageConfig, TrainConfig, load_config
from cxrgen.data.images import load_image
from cxrgen.data.manifest import read_manifest
from cxrgen.errors import ConfigError
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.conditioning import conditioning_gain
from cxrgen.evaluate.image_pairs import resize
from cxrgen.evaluate.swd import swd
from cxrgen.pipeline import CXRPipeline

log = logging.getLogger("budget")

BASE_CONFIG = "src/cxrgen/configs/cxr256-cpu.yaml"
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
    "base128": [],  # half the base recipe's resolution (128 px, 16 x 16 latents): see half_resolution()
}
HALF_RESOLUTION_ARMS = ("base128",)
#: Columns of the markdown table (lower is better except cond_gain).
COLUMNS = ("arm", "cpu_min", "steps", "images_seen", "c2st_linear", "c2st_cnn", "swd", "cond_gain")
#: Columns of the every-point table: the columns plus the stage and the scoring cost (CPU seconds).
POINT_COLUMNS = (*COLUMNS[:2], "stage", *COLUMNS[2:], "eval_cpu_s")


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
    """Realism (C2ST, SWD) of samples of the held-out prompts against their real images, and the conditioning gain.

    A model of another resolution (the 128 px base model) is scored at the held-out images' size: its
    samples upsampled (bilinear), its conditioning gain on the real images resized to its own size.
    """
    pipe = CXRPipeline.from_pretrained(model_dir)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(heldout.prompts))]
    start = time.perf_counter()
    images = pipe(heldout.prompts, num_inference_steps=steps, generator=generators, progress=False).images
    sample_s = time.perf_counter() - start
    size = int(heldout.images.shape[-1])
    samples = resize(images, size)
    folds = min(5, len(heldout.prompts) // 2)
    real = c2st(heldout.images, samples, C2STSettings(folds=folds, epochs=c2st_epochs),
                torch.Generator().manual_seed(seed))
    dist = swd(heldout.images, samples, generator=torch.Generator().manual_seed(seed))
    gain = conditioning_gain(pipe, resize(heldout.images, int(images.shape[-1])), heldout.prompts, n_timesteps=4,
                             seed=seed)
    return {"c2st_linear": real["linear"], "c2st_linear_ci": real["linear_ci"], "c2st_cnn": real["cnn"],
            "swd": dist["mean"], "swd_per_level": dist["per_level"], "cond_gain": gain["gain"],
            "loss_text": gain["loss_text"], "loss_null": gain["loss_null"], "n": len(heldout.prompts),
            "sampler": pipe.sampling.sampler, "sample_steps": steps, "sample_s_per_image": sample_s / len(images),
            "model_size": int(images.shape[-1]), "scored_size": size}


def half_resolution(cfg: TrainConfig) -> list[str]:
    """Overrides halving the recipe's image side and latent side (256 px -> the 128 px base model)."""
    side, latent = cfg.model.image_size // 2, cfg.model.denoiser.sample_size // 2
    return [f"model.image_size={side}", f"model.denoiser.sample_size={latent}", f"image.size={side}"]


def arm_config(base: str, arm: str, common: list[str], out: Path) -> TrainConfig:
    """The base recipe with the arm's and the common overrides; logs each step, never stops on steps."""
    run_fields = [f"out_dir={out}", "steps=100000000", "checkpoint_every=100000000", "sample_every=0",
                  "progress=false", "log_every=1"]
    overrides = list(ARMS[arm])
    if arm in HALF_RESOLUTION_ARMS:
        overrides += half_resolution(load_config(TrainConfig, base, [*common, *run_fields]))
    return load_config(TrainConfig, base, [*overrides, *common, *run_fields])


def arm_overrides(arm: str, common: list[str], per_arm: list[str]) -> list[str]:
    """The common overrides plus this arm's ``--arm-set ARM:key=value`` ones (e.g. base128's own cache)."""
    own = []
    for item in per_arm:
        name, sep, setting = item.partition(":")
        if not sep or "=" not in setting or name not in ARMS:
            raise ConfigError(f"--arm-set {item!r}: give ARM:key=value with ARM one of {', '.join(ARMS)}")
        if name == arm:
            own.append(setting)
    return [*common, *own]


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as a dash."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows as a markdown table of ``columns`` (numbers rounded)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_arms(records: dict[str, dict[str, Any]], n: int = 2) -> list[str]:
    """The ``n`` trained arms with the lowest SWD at their last point, among the arms trained longest (within 5 %).

    SWD because C2ST saturates early; the longest-trained only, so that a stopped arm is not ranked by an
    early point against the others' final ones.
    """
    last = {arm: rec["points"][-1] for arm, rec in records.items() if rec["kind"] == "trained" and rec["points"]}
    longest = max((p["clock_s"] for p in last.values()), default=0.0)
    final = {arm: p["swd"] for arm, p in last.items() if p["clock_s"] >= 0.95 * longest}
    return sorted(final, key=final.get)[:n]


def _minutes(point: dict[str, Any]) -> float:
    return point["cpu_min"] if point.get("cpu_min") is not None else point["steps"]  # --clock steps: steps


def plot(records: dict[str, dict[str, Any]], path: Path, arms: list[str]) -> str | None:
    """C2ST (linear), SWD and conditioning gain against CPU minutes of ``arms``, references as dashed lines.

    Returns a note when there is no plot (matplotlib missing, or no trained arm).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    curves = {arm: records[arm]["points"] for arm in arms if arm in records and records[arm]["points"]}
    references = {arm: rec["points"][-1] for arm, rec in records.items() if rec["kind"] == "reference" and rec["points"]}
    if not curves:
        return "no trained arm: no plot"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    keys = {"c2st_linear": "C2ST linear (0.5 best)", "swd": "SWD x1e3 (lower better)",
            "cond_gain": "conditioning gain (higher better)"}
    for ax, (key, title) in zip(axes, keys.items(), strict=True):
        for arm, points in curves.items():
            ax.plot([_minutes(p) for p in points], [p[key] for p in points], marker="o", label=arm)
        for name, point in references.items():
            ax.axhline(point[key], linestyle="--", color="gray", linewidth=1, label=name)
        ax.set_xlabel("CPU minutes of training")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=BASE_CONFIG, help="the base training recipe (YAML)")
    p.add_argument("--reference-model", type=Path, help="also score this model folder (e.g. src/cxrgen/models/default)")
    p.add_argument("--reference-name", default="reference", help="the reference model's row name (e.g. v1)")
    p.add_argument("--arms", nargs="*", default=["ddpm-x0", "flow", "min-snr-x0", "maskdit"], choices=list(ARMS))
    p.add_argument("--report-only", action="store_true", help="only re-write tables and plot from OUT's records")
    p.add_argument("--continue", dest="continue_", action="store_true",
                   help="train the arms recorded in OUT on from their last checkpoint to --budget-s")
    p.add_argument("--budget-s", type=float, default=1800.0, help="training seconds per arm (the full study: 1800, 5400)")
    p.add_argument("--eval-at", default="0.5,1.0", help="shares of the budget at which each arm is scored")
    p.add_argument("--clock", choices=("cpu", "wall", "steps"), default="cpu")
    p.add_argument("--cache", help="latent cache folder (cache_dir); None: the config's")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="override for every arm, a.b=v")
    p.add_argument("--arm-set", action="append", default=[], help="override for one arm, ARM:a.b=v")
    p.add_argument("--plot-arms", nargs="*", help="arms in the plot; default: the best two by final SWD")
    p.add_argument("--heldout-manifests", nargs="*", help="manifests of the held-out rows; default: the config's")
    p.add_argument("--heldout-split", default="test")
    p.add_argument("--n-eval", type=int, default=64, help="held-out prompts (and real images) per evaluation")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--c2st-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or continue) and score every arm; write budget.json, budget.md and budget.png under --out."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_args = {k: str(v) for k, v in vars(args).items()}
    if args.report_only:
        return report_only(args.out, args.plot_arms)
    common = list(args.overrides) + ([f"cache_dir={args.cache}"] if args.cache else [])
    args.out.mkdir(parents=True, exist_ok=True)
    base = arm_config(args.config, "ddpm-x0", common, args.out / "_config")
    heldout = heldout_set(args.heldout_manifests or list(base.manifests), args.n_eval, base.model.image_size,
                          args.heldout_split, args.seed)
    shares = [float(s) for s in args.eval_at.split(",")]
    evaluate = lambda model: score(model, heldout, args.sample_steps, args.seed, args.c2st_epochs)  # noqa: E731
    if args.reference_model:  # an existing model (e.g. the shipped v1) scored with the same protocol
        record = new_record(args.reference_name, "reference", args.clock, None, [])
        record["points"] = [{"model": str(args.reference_model), "cpu_min": None, "utc": utc_now(),
                             **evaluate(args.reference_model)}]
        write_record(args.out / args.reference_name, record)
    for arm in args.arms:
        arm_dir = args.out / arm
        cfg = arm_config(args.config, arm, arm_overrides(arm, common, args.arm_set), arm_dir)
        record = read_record(arm_dir)
        if record is not None and record["points"] and not args.continue_:
            raise ConfigError(f"{arm_dir} holds a recorded arm ({record['points'][-1]['cpu_min']} min): extend it "
                              "with --continue, or give a new --out")
        if record is None or not record["points"]:
            record = new_record(arm, "trained", args.clock, config_dict(cfg), arm_overrides(arm, common, args.arm_set))
        train_arm(cfg, arm_dir, record, args.budget_s, shares, evaluate, args.clock, argv)
        write_report(run_args, collect(args.out), args.out, args.plot_arms)
    return write_report(run_args, collect(args.out), args.out, args.plot_arms)


def collect(out: Path) -> dict[str, dict[str, Any]]:
    """Every arm record under OUT (OUT/*/arm.json): references first, then arms in ARMS order."""
    records = {path.parent.name: read_record(path.parent) for path in sorted(out.glob("*/arm.json"))}
    order = {arm: i for i, arm in enumerate(ARMS)}
    return dict(sorted(records.items(), key=lambda kv: (kv[1]["kind"] != "reference", order.get(kv[0], len(order)))))


def write_report(run_args: dict[str, str], records: dict[str, dict[str, Any]], out: Path,
                 plot_arms: list[str] | None = None) -> dict[str, Any]:
    """budget.json (all records), budget.md (tables) and budget.png of the ``records``."""
    results = {arm: rec["points"] for arm, rec in records.items()}
    rows = [{"arm": arm, **points[-1]} for arm, points in results.items() if points]
    every = [{"arm": arm, **p} for arm, points in results.items() for p in points]
    arms = plot_arms if plot_arms is not None else best_arms(records)
    note = plot(records, out / "budget.png", arms)
    table = ("## Last point of each arm\n\n" + markdown_table(rows) + "\n## Every evaluation point\n\n"
             + markdown_table(every, POINT_COLUMNS) + f"\nPlot: {', '.join(arms) or '-'}"
             + (f" ({note})" if note else "") + "\n")
    (out / "budget.md").write_text(table, encoding="utf-8")
    report = {"args": run_args, "arms": results, "records": records, "table": rows, "plot_arms": arms,
              "plot_note": note}
    (out / "budget.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(table)  # noqa: T201 - a benchmark script's result
    return report


def report_only(out: Path, plot_arms: list[str] | None = None) -> dict[str, Any]:
    """Re-write tables and plot from OUT's arm records (or, when they are gone, the records kept in OUT/budget.json)."""
    records = collect(out)
    saved = json.loads((out / "budget.json").read_text(encoding="utf-8")) if (out / "budget.json").is_file() else {}
    if not records:
        records = saved.get("records", {})
    if not records:
        raise ConfigError(f"{out} holds no arm records (*/arm.json) and no budget.json with records")
    return write_report(saved.get("args", {}), records, out, plot_arms)


if __name__ == "__main__":
    main()
