"""Train the small phantom model (the end-to-end test's recipe), run the control benchmark, draw the README grid.

    .venv/bin/python benchmarks/phantom.py --out runs/phantom --grid docs/phantom_grid.png

Writes, per guidance scale W, OUT/control_wW.json (the benchmark: held-out wordings; scores, per-prompt
measurements, settings) and OUT/control_train_wording_wW.json (the same findings in training wordings:
tells "ignores the text" from "does not generalise the wording"), and the grid PNG; prints the scores
and the wall time. ``--model DIR`` skips training and uses a saved model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import yaml

from cxrgen.phantom.control import CONTROL_KEYS, control_benchmark
from cxrgen.phantom.grid import phantom_grid
from cxrgen.phantom.recipe import PhantomRecipe, train_phantom_model
from cxrgen.pipeline import load_pipeline

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


def recipe_overrides(items: list[str]) -> dict[str, object]:
    """``["hidden_size=128", ...]`` -> {"hidden_size": 128}; values parsed as YAML scalars."""
    fields = {f.name for f in dataclasses.fields(PhantomRecipe)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: give FIELD=VALUE with FIELD one of {sorted(fields)}")
        out[key] = yaml.safe_load(value)
    return out


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
    parser.add_argument("--guidance-scale", "--guidance", dest="guidance", type=float, nargs="+",
                        help="guidance scales to score (default: the model's own); the first draws the grid")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PhantomRecipe field, e.g. --set hidden_size=128 (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    model = args.model
    if model is None:
        fields = {"steps": args.steps, "seed": args.seed, "max_findings": args.max_findings}
        recipe = dataclasses.replace(PhantomRecipe(), **{**fields, **recipe_overrides(args.set)})  # --set wins
        print(f"recipe: {recipe}")
        model = train_phantom_model(out, recipe)["model_dir"]
    trained = time.perf_counter()
    pipe = load_pipeline(model)
    out.mkdir(parents=True, exist_ok=True)
    scales = args.guidance or [pipe.sampling.guidance_scale]
    for scale in scales:
        sampling = dataclasses.replace(pipe.sampling, guidance_scale=scale)
        for wording in ("heldout", "train"):  # the benchmark, then the training wordings (a diagnostic)
            result = control_benchmark(pipe, n_per_prompt=args.n_per_prompt, sampling=sampling, seed=args.seed,
                                       progress=False, wording=wording)
            name = "control" if wording == "heldout" else "control_train_wording"
            (out / f"{name}_w{scale:g}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            scores = {k: round(result[k], 3) for k in CONTROL_KEYS}
            by = {k: round(v, 3) for k, v in result["laterality_by_finding"].items()}
            print(f"w={scale:g} {wording} wording: {json.dumps(scores)} laterality by finding {json.dumps(by)}")
    pipe.sampling = dataclasses.replace(pipe.sampling, guidance_scale=scales[0])
    lines = phantom_grid(pipe, GRID_PROMPTS, args.grid, seed=args.seed)
    print(f"model {model}; train {trained - start:.0f} s, benchmark + grid {time.perf_counter() - trained:.0f} s")
    for prompt, line in zip(GRID_PROMPTS, lines, strict=True):
        print(f"{prompt} -> {line}")


if __name__ == "__main__":
    main()
