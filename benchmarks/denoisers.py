"""U-ViT versus a SD-1.x-shaped U-Net on the same cache, text encoder and images seen; then samplers.

    # arms: same config (cxr256-cpu.yaml: cached latents + frozen MiniLM), same steps x batch
    .venv/bin/python benchmarks/denoisers.py arms --steps 150 --out runs/bench/denoisers
    # samplers on one model (the shipped default unless --model)
    .venv/bin/python benchmarks/denoisers.py samplers --out runs/bench/samplers

Prints Markdown tables (parameters, GFLOPs per forward, FID_cxr, C2ST (CNN, linear) and SWD against
held-out real images, PRDC precision / recall, alignment AUROC, MS-SSIM, sampling s/image, train
images/s, and U-ViT / U-Net ratios; or the same per sampler) and writes OUT/results.json. FID_cxr is FID in the shipped cxrgen-evaluator's feature space on
held-out images (see arms.eval_sets); cond_gain is the conditioning gain (cxrgen.evaluate.conditioning:
1 - held-out denoising loss with the report / with the null prompt). Every finished run is reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arms import conditioning, eval_sets, markdown_table, ratio_row, run_arm, score_model, summary_row

from cxrgen.errors import ConfigError
from cxrgen.pipeline import resolve_model

ARMS = {"U-ViT": ["model.denoiser.name=uvit-xs"], "U-Net": ["model.denoiser.name=unet-xs"]}
ARM_COLUMNS = ["arm", "params_M", "gflops_forward", "fid_cxr", "c2st_cnn", "c2st_linear", "swd", "auroc", "ms_ssim",
               "cond_gain", "s_per_image", "train_images_per_s"]
#: (name, sampler, steps): DPM-Solver++ 20 / 25, DDIM 50, PNDM 75 (RoentGen's setting).
SAMPLERS = [("DPM++ 20", "dpm++", 20), ("DPM++ 25", "dpm++", 25), ("DDIM 50", "ddim", 50), ("PNDM 75", "pndm", 75)]
SAMPLER_COLUMNS = ["arm", "fid_cxr", "c2st_cnn", "c2st_linear", "swd", "precision", "recall", "auroc", "ms_ssim",
                   "s_per_image", "gflops_per_image"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (runs, evaluations, results.json)")
    p.add_argument("--manifests", nargs="+", default=["out/covid/manifest.parquet", "out/pediatric/manifest.parquet"])
    p.add_argument("--prompts-per-set", type=int, default=16, help="held-out test prompts from each manifest")
    p.add_argument("--n-per-prompt", type=int, default=4, help="images per prompt (MS-SSIM needs >= 2)")


def run_arms(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    sets = eval_sets(args.manifests, out / "sets", args.prompts_per_set)
    rows = []
    for name, overrides in ARMS.items():
        row, _ = run_arm(name, args.config, overrides + list(args.overrides), out / name, args.steps, sets,
                         args.manifests, args.n_per_prompt, args.weights)
        rows.append(row)
    rows.append(ratio_row(rows[0], rows[1], ARM_COLUMNS))
    print(f"\n{args.steps} steps x batch = {rows[0]['images_seen']} images seen per arm\n")
    print(markdown_table(rows, ARM_COLUMNS))
    return {"rows": rows, "steps": args.steps, "config": args.config, "overrides": args.overrides,
            "weights": args.weights}


def run_samplers(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    sets = eval_sets(args.manifests, out / "sets", args.prompts_per_set)
    model = Path(resolve_model(args.model))
    rows = []
    for name, sampler, steps in SAMPLERS:
        try:
            result = score_model(model, sets, out / name.replace(" ", "-").replace("+", "p"), args.n_per_prompt,
                                 sampler=sampler, steps=steps)
        except ConfigError as exc:  # e.g. PNDM cannot sample an x0-prediction model
            print(f"{name}: skipped: {exc}")
            rows.append({"arm": name, "note": str(exc)})
            continue
        row = summary_row(name, result)
        row["gflops_per_image"] = result["compute"]["gflops_per_image"]
        rows.append(row)
    print(markdown_table(rows, SAMPLER_COLUMNS))
    gain = conditioning(model, args.manifests, out / "conditioning.json")  # does the report steer this model?
    print(f"conditioning gain {gain['gain']:.4f} ({gain['n']} validate images x {gain['timesteps_per_image']} timesteps)")
    return {"rows": rows, "model": str(model), "conditioning": gain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    arms = sub.add_parser("arms", help="train and score U-ViT and U-Net on the same budget")
    _common(arms)
    arms.add_argument("--config", default="src/cxrgen/configs/cxr256-cpu.yaml")
    arms.add_argument("--steps", type=int, default=150)
    arms.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    arms.add_argument("--weights", choices=("ema", "raw"), default="ema",
                      help="score the EMA weights (the saved model) or the last checkpoint's raw weights")
    samplers = sub.add_parser("samplers", help="score one model with each sampler setting")
    _common(samplers)
    samplers.add_argument("--model", help="model folder (default: the shipped default model)")
    args = parser.parse_args()
    results = run_arms(args) if args.mode == "arms" else run_samplers(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
