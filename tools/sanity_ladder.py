"""Run the sanity ladder (cxrgen.evaluate.ladder) on shared real images with every metric; print a table.

    PYTHONPATH=src .venv/bin/python tools/sanity_ladder.py --data ../shared/data/pediatric-pneumonia-224 \
        --n 128 --size 128 [--evaluator src/cxrgen/models/evaluator] [--json out/ladder.json]

Reference and held-out images are disjoint random patients of one collection (its metadata.csv);
the rungs are made from the held-out images. A metric passes when it ranks the five rungs in order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.fid import fid_from_features
from cxrgen.evaluate.ladder import RUNGS, is_ordered, run_ladder
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.suite import load_images
from cxrgen.evaluate.swd import swd

PATIENT_COLUMNS = ("patient_key", "patient_id")


def two_disjoint_sets(folder: Path, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n reference and n held-out images (N, 1, size, size) of disjoint patients, at random."""
    meta = pd.read_csv(folder / "metadata.csv")
    patient = next(c for c in PATIENT_COLUMNS if c in meta.columns)
    rng = np.random.default_rng(seed)
    patients = rng.permutation(meta[patient].astype(str).unique())
    half = set(patients[: len(patients) // 2])
    in_ref = meta[patient].astype(str).isin(half)
    ref = meta[in_ref].sample(n, random_state=seed)
    held = meta[~in_ref].sample(n, random_state=seed + 1)
    return (load_images([folder / p for p in ref["image"]], size, desc="reference"),
            load_images([folder / p for p in held["image"]], size, desc="held-out"))


class Metrics:
    """The ladder's metrics; C2ST and evaluator features computed once per image set."""

    def __init__(self, evaluator: CXREvaluator, settings: C2STSettings) -> None:
        self.evaluator, self.settings = evaluator.eval(), settings
        self._c2st: dict[int, tuple[torch.Tensor, dict]] = {}  # the tensor is kept so that its id is not reused

    def _c2st_of(self, ref: torch.Tensor, x: torch.Tensor) -> dict:
        if id(x) not in self._c2st:
            self._c2st[id(x)] = (x, c2st(ref, x, self.settings, torch.Generator().manual_seed(0)))
        return self._c2st[id(x)][1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.evaluator.features(b) for b in x.split(64)])

    def table(self) -> dict:
        """name -> metric(reference, images) -> float; lower is better for each."""
        return {
            "swd": lambda r, x: swd(r, x, generator=torch.Generator().manual_seed(0))["mean"],
            "c2st_cnn": lambda r, x: self._c2st_of(r, x)["cnn"],
            "c2st_linear": lambda r, x: self._c2st_of(r, x)["linear"],
            "fid_cxr": lambda r, x: fid_from_features(self._features(r), self._features(x)),
            "neg_density_cxr": lambda r, x: -prdc(self._features(r), self._features(x))["density"],
            "neg_precision_cxr": lambda r, x: -prdc(self._features(r), self._features(x))["precision"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pediatric-pneumonia-224")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluator", default=str(DEFAULT_EVALUATOR))
    parser.add_argument("--json", help="write the values here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ref, held = two_disjoint_sets(Path(args.data), args.n, args.size, args.seed)
    metrics = Metrics(CXREvaluator.from_pretrained(args.evaluator), C2STSettings())
    values = run_ladder(ref, held, metrics.table(), torch.Generator().manual_seed(args.seed))
    print("| metric | " + " | ".join(RUNGS) + " | ordered |")
    print("| --- |" + " --- |" * (len(RUNGS) + 1))
    for name, row in values.items():
        print(f"| {name} | " + " | ".join(f"{row[r]:.4g}" for r in RUNGS) + f" | {is_ordered(row)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "values": values}, indent=2) + "\n")


if __name__ == "__main__":
    main()
