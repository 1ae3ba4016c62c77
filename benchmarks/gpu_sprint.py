"""The GPU sprint: train the GPU recipe within a wall-clock budget, measure throughput and MFU, write the model.

One command to run as-is whenever a GPU is lent (see benchmarks/README.md):

    python benchmarks/gpu_sprint.py --out runs/gpu-sprint [--budget-s 480] [--wheels wheels/] [--set k=v ...]

Phases, each started only if the budget allows: (1) environment (optional offline install from
carried wheels, device name); (2) a short warm-up run of the trainer measures steps/s; (3) the main
run (cxrgen's own trainer, ``train()``) for as many steps as fit the time left minus a reserve;
(4) sampling throughput at batch 64 with the trained pipeline; (5) a sample grid. Writes OUT/train/model
(a CXRPipeline folder), OUT/sprint.json and OUT/samples.png.

MFU = achieved FLOP/s / the chip's dense bf16 peak. FLOPs are the denoiser's only (cxrgen.compute's
FlopCounterMode count, a multiply-add = 2 FLOPs): sampling = forward x steps x (2 with guidance);
training = 3 x forward per image (forward + backward). Text encoder and autoencoder are left out,
so MFU is a lower bound of the chip's use. On CPU MFU is null.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu_sprint")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "src/cxrgen/configs/cxr256-gpu.yaml"
#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
RESERVE_FRACTION = 0.25  # of the budget, kept for saving the model, the sampling benchmark and the grid


class Clock:
    """Seconds since the sprint started and what is left of its budget."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def install_wheels(wheels: Path) -> None:
    """pip-install every wheel in ``wheels`` offline (--no-index --find-links), as the GPU machine has no internet."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no *.whl in {wheels}; build them with `pip download -d {wheels} ...` first")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels), *files]
    subprocess.run(cmd, check=True)


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """The chip's dense bf16 peak (TFLOP/s) by name, ``override`` if given, None on CPU or an unknown chip."""
    if override is not None:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def mfu(flop_per_s: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation, or None when the peak is unknown (CPU)."""
    if flop_per_s is None or peak is None:
        return None
    return flop_per_s / (peak * 1e12)


def sprint_config(args: argparse.Namespace, device_type: str, steps: int, out: Path):
    """The GPU recipe with the sprint's overrides: ``steps``, final checkpoint only, an EMA horizon ~steps/10."""
    from cxrgen.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, args.config, list(args.set))
    ema = cfg.ema_decay if cfg.ema_decay is None else min(cfg.ema_decay, 1.0 - 10.0 / max(steps, 20))
    return dataclasses.replace(
        cfg, steps=steps, out_dir=str(out), checkpoint_every=steps, sample_every=0, progress=False,
        warmup_steps=min(cfg.warmup_steps, max(steps // 10, 0)), ema_decay=ema,
        log_every=max(1, steps // 20),
        mixed_precision=cfg.mixed_precision if device_type == "cuda" else "no",
    )


def steady_images_per_s(summary: dict[str, Any]) -> float:
    """Training images/s from the logged windows after the first (compilation, caches), else the whole run."""
    rows = [r["images_per_s"] for r in summary.get("history", [])[1:]]
    return sum(rows) / len(rows) if rows else summary["images_per_s"]


def train_phase(args: argparse.Namespace, clock: Clock, device_type: str, out: Path) -> tuple[dict, dict]:
    """Warm-up run (measures steps/s and set-up time), then the main run sized to the time left."""
    from cxrgen.train.trainer import train

    t0 = clock.elapsed()
    warm = train(sprint_config(args, device_type, args.warmup_steps, out / "warmup"), overwrite=True)
    setup_s = clock.elapsed() - t0 - warm["wall_s"]  # building parts, data, saving the model
    # steady rate (after the first logged step: compilation, allocator), with a 10% margin
    steps_per_s = 0.9 * warm["steps"] / max(warm["wall_s"], 1e-9) * steady_images_per_s(warm) / warm["images_per_s"]
    shutil.rmtree(out / "warmup", ignore_errors=True)
    train_until = args.budget_s * (1.0 - RESERVE_FRACTION)
    seconds = train_until - clock.elapsed() - setup_s
    steps = int(seconds * steps_per_s)
    plan = {"warmup_steps": warm["steps"], "warmup_wall_s": warm["wall_s"], "setup_s": setup_s,
            "warmup_steps_per_s": steps_per_s, "planned_steps": steps, "planned_train_s": seconds}
    if steps < 1:
        raise TimeoutError(f"no time left to train after the warm-up ({clock.elapsed():.0f} s of {args.budget_s} s)")
    cfg = sprint_config(args, device_type, steps, out / "train")
    summary = train(cfg, overwrite=True)
    from cxrgen.config.base import to_dict

    return plan, {**summary, "config": to_dict(cfg)}  # plain JSON (denoiser kwargs are a FrozenDict)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_phase(pipe, device, batch: int, steps: int, out: Path) -> dict[str, Any]:
    """Images/s of the trained pipeline at ``batch`` (bf16 autocast on GPU), its GFLOPs per image, a grid PNG."""
    import torch

    from cxrgen.config import ImageConfig
    from cxrgen.evaluate.compute_cost import denoiser_cost
    from cxrgen.train.metrics_log import save_grid

    pipe = pipe.to(device)
    sampling = pipe.sampling
    prompts = ["PA chest radiograph. Large right pleural effusion.", "Pediatric AP chest radiograph. Pneumonia.",
               "PA chest radiograph. No acute cardiopulmonary process.", "AP chest radiograph. Bilateral opacities."]
    batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def generate(p: list[str]):
        gen = torch.Generator().manual_seed(sampling.seed)  # CPU noise, as the pipeline does
        with torch.inference_mode(), autocast:
            return pipe(p, num_inference_steps=steps, generator=gen, progress=False)

    generate(batch_prompts[:2])  # warm-up: kernels, allocator
    _sync(device)
    t0 = time.perf_counter()
    result = generate(batch_prompts)
    _sync(device)
    seconds = time.perf_counter() - t0
    cost = denoiser_cost(pipe, steps, sampling.guidance_scale)
    n = min(16, batch)
    grid = save_grid(result.images[:n], result.prompts[:n], out / "samples.png",
                     ImageConfig(size=pipe.image_size), 0)
    return {"batch_size": batch, "steps": steps, "guidance_scale": sampling.guidance_scale,
            "sampler": sampling.sampler, "seconds": seconds, "images_per_s": batch / seconds,
            "gflops_per_image": cost["gflops_per_image"], "gflops_forward": cost["gflops_forward"],
            "denoiser_params": cost["denoiser_params"], "grid": str(grid)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (model, sprint.json, samples.png)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (default: the GPU recipe)")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="config override, repeatable")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole sprint")
    p.add_argument("--wheels", type=Path, default=None, help="folder of wheels to pip-install offline first")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the chip (overrides the table)")
    p.add_argument("--warmup-steps", type=int, default=20, help="steps of the warm-up run that measures speed")
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the model's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sprint; returns (and writes to OUT/sprint.json) what it measured."""
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"budget_s": args.budget_s, "config_path": str(args.config), "overrides": args.set,
                              "notes": []}
    if args.wheels is not None:
        install_wheels(args.wheels)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if device.type == "cuda" else None
    report.update(device=name, torch=torch.__version__, peak_bf16_tflops=peak, setup_s=clock.elapsed())
    plan, summary = train_phase(args, clock, device.type, args.out)
    model_dir = Path(summary["model_dir"])
    train_ips = steady_images_per_s(summary)
    report.update(plan=plan, model_dir=str(model_dir), steps=summary["steps"], images_seen=summary["images_seen"],
                  final_loss=summary["final_loss"], losses=[r["loss"] for r in summary["history"]],
                  train_wall_s=summary["wall_s"], train_images_per_s=train_ips, config=summary["config"],
                  after_train_s=clock.elapsed())
    from cxrgen.evaluate.compute_cost import denoiser_cost
    from cxrgen.pipeline import CXRPipeline

    pipe = CXRPipeline.from_pretrained(model_dir)
    steps = args.sample_steps or pipe.sampling.steps
    report["gflops_forward"] = denoiser_cost(pipe, steps, pipe.sampling.guidance_scale)["gflops_forward"]
    report["sampling"] = None
    if clock.left() > 0.1 * args.budget_s:
        report["sampling"] = sample_phase(pipe, device, args.sample_batch, steps, args.out)
    else:
        report["notes"].append(f"sampling benchmark skipped: {clock.left():.0f} s left of {args.budget_s:.0f} s")
    _add_mfu(report, peak)
    report["elapsed_s"] = clock.elapsed()
    (args.out / "sprint.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("sprint done in %.0f s: %s", report["elapsed_s"], args.out / "sprint.json")
    return report


def _add_mfu(report: dict[str, Any], peak: float | None) -> None:
    """Training and sampling achieved TFLOP/s and MFU (denoiser FLOPs; training = 3 x forward per image)."""
    s = report["sampling"]
    train_flops = 3 * report["gflops_forward"] * 1e9 * report["train_images_per_s"]
    sample_flops = None if s is None else s["gflops_per_image"] * 1e9 * s["images_per_s"]
    report["train_tflops"] = train_flops / 1e12
    report["sample_tflops"] = None if sample_flops is None else sample_flops / 1e12
    report["train_mfu"] = mfu(train_flops, peak)
    report["sample_mfu"] = mfu(sample_flops, peak)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
