"""Which text encoder for the default model: MiniLM-L6 frozen, MiniLM-L6 trained jointly, or a small
encoder trained from scratch on the shared report corpus, with the same U-ViT, cache and images seen.

    .venv/bin/cxrgen tokenizer out/covid/manifest.parquet out/pediatric/manifest.parquet \
        out/iu/manifest.parquet --out runs/tokenizer-cxr --vocab-size 4000
    .venv/bin/python benchmarks/text_encoders.py --steps 150 --out runs/bench/text

Prints one Markdown table (conditioning gain, FID_cxr, alignment AUROC, MS-SSIM, train images/s,
text parameters) and writes OUT/results.json; finished arms are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arms import eval_sets, markdown_table, run_arm

COLUMNS = ["arm", "cond_gain", "fid_cxr", "auroc", "ms_ssim", "train_images_per_s", "text_params_M", "s_per_image"]


def arms(tokenizer: str) -> dict[str, list[str]]:
    """Overrides of each arm on top of the base config (frozen MiniLM)."""
    return {
        "MiniLM frozen": [],
        "MiniLM joint": ["model.text_encoder.trainable=true", "text_lr=0.00003"],
        "scratch": ["model.text_encoder.backend=scratch", f"model.text_encoder.name_or_path={tokenizer}",
                    "model.text_encoder.trainable=true", "model.text_encoder.width=128",
                    "model.text_encoder.depth=4", "model.denoiser.context_dim=128"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="src/cxrgen/configs/cxr256-cpu.yaml")
    parser.add_argument("--tokenizer", default="runs/tokenizer-cxr", help="from `cxrgen tokenizer` (scratch arm)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--manifests", nargs="+", default=["out/covid/manifest.parquet", "out/pediatric/manifest.parquet"])
    parser.add_argument("--prompts-per-set", type=int, default=16)
    parser.add_argument("--n-per-prompt", type=int, default=4)
    parser.add_argument("--only", action="append", help="run only these arms (repeatable)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="score the EMA weights (the saved model) or the last checkpoint's raw weights")
    args = parser.parse_args()
    out = Path(args.out)
    sets = eval_sets(args.manifests, out / "sets", args.prompts_per_set)
    rows = []
    for name, overrides in arms(args.tokenizer).items():
        if args.only and name not in args.only:
            continue
        folder = out / name.replace(" ", "-")
        row, result = run_arm(name, args.config, overrides, folder, args.steps, sets, args.manifests,
                              args.n_per_prompt, args.weights)
        row["text_params_M"] = result["compute"]["text_encoder_params"] / 1e6
        rows.append(row)
    print(f"\n{args.steps} steps per arm\n")
    print(markdown_table(rows, COLUMNS))
    (out / "results.json").write_text(json.dumps({"rows": rows, "steps": args.steps}, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
