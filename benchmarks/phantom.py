"""Train the small phantom model (the end-to-end test's recipe), run the control benchmark, draw the README grid.

    .venv/bin/python benchmarks/phantom.py --out runs/phantom --grid docs/phantom_grid.png

Writes OUT/control.json (scores, per-prompt measurements, settings) and the grid PNG; prints the
scores and the wall time. ``--model DIR`` skips training and uses a saved model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from cxrgen.phantom.control import CONTROL_KEYS, control_benchmark
from cxrgen.phantom.grid import phantom_grid
from cxrgen.phantom.recipe import PhantomRecipe, train_phantom_model
from cxrgen.pipeline import CXRPipeline

#: One prompt per row of the README figure (held-out wordings, as in the benchmark).
GRID_PROMPTS = [
    "A large effusion is seen in the left pleural space. No evidence of pneumothorax.",
    "A large effusion is seen in the right pleural space.",
    "Small collection of fluid in the right hemithorax.",
    "Bilateral pleural effusions, moderate in size.",
    "A large pneumothorax is present on the left.",
    "Pneumonia of the right upper lobe.",
    "The cardiac silhouette is enlarged. There is no effusion and no pneumothorax.",
    "Unremarkable chest radiograph.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/phantom", help="output folder (data, run, control.json)")
    parser.add_argument("--model", help="a saved model directory: skip training")
    parser.add_argument("--steps", type=int, default=PhantomRecipe.steps, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom set and the training run")
    parser.add_argument("--n-per-prompt", type=int, default=2, help="benchmark images per prompt")
    parser.add_argument("--grid", default="docs/phantom_grid.png", help="where to write the figure")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-findings", type=int, default=PhantomRecipe.max_findings,
                        help="at most this many findings per training phantom (default: no limit)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    model = args.model
    if model is None:
        recipe = dataclasses.replace(PhantomRecipe(), steps=args.steps, seed=args.seed,
                                     max_findings=args.max_findings)
        model = train_phantom_model(out, recipe)["model_dir"]
    trained = time.perf_counter()
    pipe = CXRPipeline.from_pretrained(model)
    result = control_benchmark(pipe, n_per_prompt=args.n_per_prompt, seed=args.seed, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "control.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = phantom_grid(pipe, GRID_PROMPTS, args.grid, seed=args.seed)
    print(json.dumps({k: result[k] for k in CONTROL_KEYS}))
    print(f"model {model}; train {trained - start:.0f} s, benchmark + grid {time.perf_counter() - trained:.0f} s")
    for prompt, line in zip(GRID_PROMPTS, lines):
        print(f"{prompt} -> {line}")


if __name__ == "__main__":
    main()
