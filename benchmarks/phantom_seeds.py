"""Train the phantom recipe once per seed and score each model: how much do the scores move between runs?

    .venv/bin/python benchmarks/phantom_seeds.py --out runs/phantom-seeds --seeds 0 1 2 3
    .venv/bin/python benchmarks/phantom_seeds.py --out runs/phantom-seeds-tokens --seeds 0 1 --set text_pooling=tokens

A seed changes both the phantom training set and the run (init, batches, noise), which is also
roughly what another machine's floating point does to one seed: the end-to-end test trains seed 0
on whatever machine CI has, so its margin is best judged from the spread here. ``--jobs`` runs
that many seeds at once, each on one torch thread (two one-thread runs on a 2-core machine finish
in about the time of one two-thread run). Each model is scored on the held-out benchmark with the
benchmark seed 0, 2 images per prompt, at each ``--guidance``. Writes OUT/seedK/control_wW.json and
prints one line per seed and guidance, then the minimum and mean of each score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import numpy as np
import torch

from cxrgen.phantom.control import CONTROL_KEYS, control_benchmark
from cxrgen.phantom.recipe import PhantomRecipe, train_phantom_model
from cxrgen.pipeline import CXRPipeline

sys.path.insert(0, str(Path(__file__).parent))
from phantom import recipe_overrides  # noqa: E402  (the benchmarks folder is not a package)

SCORES = ("laterality_acc", "negation_acc", "size_spearman", "presence_acc", "cardiomegaly_acc")


def run_seed(out: Path, seed: int, overrides: list[str], guidance: list[float]) -> list[dict]:
    """Train seed ``seed`` (unless OUT/seedK/run/model exists) and score it; results are also written."""
    torch.set_num_threads(1)
    folder = out / f"seed{seed}"
    model = folder / "run" / "model"
    start = time.perf_counter()
    if not (model / "model_index.json").is_file():
        recipe = dataclasses.replace(PhantomRecipe(), seed=seed, **recipe_overrides(overrides))
        train_phantom_model(folder, recipe)
    train_s = time.perf_counter() - start
    pipe = CXRPipeline.from_pretrained(model)
    rows = []
    for scale in guidance:
        sampling = dataclasses.replace(pipe.sampling, guidance_scale=scale)
        result = control_benchmark(pipe, n_per_prompt=2, sampling=sampling, seed=0, progress=False)
        (folder / f"control_w{scale:g}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        rows.append({"seed": seed, "guidance": scale, "train_s": round(train_s),
                     **{k: round(result[k], 3) for k in CONTROL_KEYS},
                     "laterality_by_finding": {k: round(v, 3) for k, v in result["laterality_by_finding"].items()}})
    (folder / "scores.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/phantom-seeds", help="output folder (one seedK folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="recipe seeds to train")
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="guidance scales to score")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once (one thread each)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PhantomRecipe field for every seed (repeatable)")
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)  # a worker process: train this seed only
    args = parser.parse_args()
    recipe_overrides(args.set)  # fail early on a bad --set
    out = Path(args.out)
    if args.one_seed is not None:
        run_seed(out, args.one_seed, args.set, args.guidance)
        return
    out.mkdir(parents=True, exist_ok=True)
    pending = list(args.seeds)
    running: dict[subprocess.Popen, IO[str]] = {}  # worker -> its log file
    common = ["--out", str(out), "--guidance", *map(str, args.guidance), *[f"--set={s}" for s in args.set]]
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log = (out / f"seed{seed}.log").open("w")
            proc = subprocess.Popen([sys.executable, __file__, "--one-seed", str(seed), *common],
                                    stdout=log, stderr=subprocess.STDOUT)
            running[proc] = log
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            running.pop(proc).close()
            if proc.returncode:
                raise SystemExit(f"a seed run failed ({proc.args}); see its log in {out}")
    rows = [row for seed in args.seeds
            for row in json.loads((out / f"seed{seed}" / "scores.json").read_text(encoding="utf-8"))]
    for row in rows:
        print(json.dumps(row))
    for scale in args.guidance:
        mine = [r for r in rows if r["guidance"] == scale]
        summary = {k: {"min": round(min(r[k] for r in mine), 3), "mean": round(float(np.mean([r[k] for r in mine])), 3)}
                   for k in SCORES}
        print(f"w={scale:g}, {len(mine)} seeds: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
