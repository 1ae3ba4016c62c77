"""Run the sanity ladders on shared real images with every metric; print a table per ladder.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python tools/sanity_ladder.py \
        --data ../shared/data/pediatric-pneumonia-224 --n 128 --size 224 [--model-rungs --model-n 64] \
        [--evaluator DIR ...] [--json out/ladder.json]

Reference and held-out images are disjoint patients: with an evaluator folder holding
``heldout_images.json`` (``cxrgen train-evaluator-ssl`` writes it), its validate images are the
reference and its test images the held-out set (images the evaluator never trained on); otherwise
random halves of the collection's patients. The degraded-real rungs (cxrgen.evaluate.ladder) are made
from the held-out images; ``--model-rungs`` adds the model ladder (cxrgen.evaluate.model_ladder and
cxrgen.train.short_run: held-out, blurred + noised held-out, the model's samples, samples of its
recipe run ``--barely-steps`` steps from scratch on ``--barely-images`` training images of other
patients (never the evaluator's validate or test images), uniform noise; for the first ``--model-n`` held-out images' prompts, against all
``--n`` reference images for the evaluator rows and the first ``--model-n`` for SWD and C2ST). Every
``--evaluator`` gives its own FID / precision / density rows. A metric passes when it ranks the rungs in order.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.data.readers.pediatric import pediatric_prompt
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.fid import fid_from_features
from cxrgen.evaluate.ladder import RUNGS, degrade, is_ordered, is_ranked_to_ceiling, score_rungs
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.suite import load_images
from cxrgen.evaluate.swd import swd
from cxrgen.evaluate.train_ssl import HELDOUT_NAME

PATIENT_COLUMNS = ("patient_key", "patient_id")


def three_disjoint_sets(folder: Path, n: int, n_train: int, seed: int, evaluator: Path | None,
                        source: str) -> tuple[pd.DataFrame, ...]:
    """n reference, n held-out and n_train training rows of disjoint patients: the evaluator's validate / test
    images and others (never validate or test) when its listing is given, else random patient halves."""
    meta = pd.read_csv(folder / "metadata.csv")
    patient = meta[next(c for c in PATIENT_COLUMNS if c in meta.columns)].astype(str)
    listing = evaluator / HELDOUT_NAME if evaluator is not None else None
    seen = pd.Series(False, index=meta.index)  # images that may never be trained on
    if listing is not None and listing.is_file() and source in (held := json.loads(listing.read_text())):
        name = meta["image"].map(os.path.basename)
        in_ref, in_held = name.isin(set(held[source]["validate"])), name.isin(set(held[source]["test"]))
        seen = in_ref | in_held
    else:
        patients = np.random.default_rng(seed).permutation(patient.unique())
        in_ref = patient.isin(set(patients[: len(patients) // 2]))
        in_held = ~in_ref
    ref_rows, held_rows = meta[in_ref].sample(n, random_state=seed), meta[in_held].sample(n, random_state=seed + 1)
    used = set(patient[ref_rows.index]) | set(patient[held_rows.index])
    train_rows = meta[~seen & ~patient.isin(used)].sample(n_train, random_state=seed + 2)
    return ref_rows, held_rows, train_rows


class Metrics:
    """The ladder's metrics; C2ST and each evaluator's features computed once per image set."""

    def __init__(self, evaluators: dict[str, CXREvaluator], settings: C2STSettings) -> None:
        self.evaluators, self.settings = {k: e.eval() for k, e in evaluators.items()}, settings
        self._cache: dict[tuple[str, int], tuple[torch.Tensor, object]] = {}  # the tensor keeps its id unique

    def _once(self, kind: str, x: torch.Tensor, make) -> object:
        if (kind, id(x)) not in self._cache:
            self._cache[(kind, id(x))] = (x, make())
        return self._cache[(kind, id(x))][1]

    def _features(self, name: str, x: torch.Tensor) -> torch.Tensor:
        ev = self.evaluators[name]
        return self._once(f"features {name}", x, lambda: torch.cat([ev.features(b) for b in x.split(64)]))

    def _c2st_of(self, ref: torch.Tensor, x: torch.Tensor) -> dict:
        return self._once("c2st", x, lambda: c2st(ref, x, self.settings, torch.Generator().manual_seed(0)))

    def free(self) -> dict:
        """The evaluator-free metrics: name -> metric(reference, images) -> float; lower is better."""
        return {
            "swd": lambda r, x: swd(r, x, generator=torch.Generator().manual_seed(0))["mean"],
            "c2st_cnn": lambda r, x: self._c2st_of(r, x)["cnn"],
            "c2st_linear": lambda r, x: self._c2st_of(r, x)["linear"],
        }

    def in_feature_spaces(self) -> dict:
        """FID, -precision and -density in every evaluator's space; lower is better."""
        out = {}
        for name in self.evaluators:
            def feats(r, x, name=name):
                return self._features(name, r), self._features(name, x)
            out[f"fid {name}"] = lambda r, x, feats=feats: fid_from_features(*feats(r, x))
            out[f"neg_precision {name}"] = lambda r, x, feats=feats: -prdc(*feats(r, x))["precision"]
            out[f"neg_density {name}"] = lambda r, x, feats=feats: -prdc(*feats(r, x))["density"]
        return out


#: Bounded metrics (name prefix -> bound): neighbouring rungs may tie only where both reach the bound
#: (C2ST accuracy 1: perfectly told from real; precision / density 0: no sample near a real one).
BOUNDS = {"c2st": 0.98, "neg_precision": 0.0, "neg_density": 0.0}


def in_order(name: str, row: dict[str, float], rungs: tuple[str, ...]) -> bool:
    """Whether the metric ``name`` ranks the rungs in order (ties allowed only at a bounded metric's bound)."""
    bound = next((b for prefix, b in BOUNDS.items() if name.startswith(prefix)), None)
    return is_ordered(row, rungs=rungs) if bound is None else is_ranked_to_ceiling(row, rungs, bound)


def print_table(values: dict[str, dict[str, float]], rungs: tuple[str, ...]) -> None:
    """One markdown row per metric, its value on every rung and whether they are in order."""
    print("| metric | " + " | ".join(rungs) + " | ordered |")
    print("| --- |" + " --- |" * (len(rungs) + 1))
    for name, row in values.items():
        print(f"| {name} | " + " | ".join(f"{row[r]:.4g}" for r in rungs) + f" | {in_order(name, row, rungs)} |")


def prompts_of(rows: pd.DataFrame) -> list[str]:
    """The pediatric prompt of every metadata row."""
    return [pediatric_prompt(v, str(lab).strip().lower()) for v, lab in zip(rows["view"], rows["label"], strict=True)]


def model_ladder(args: argparse.Namespace, folder: Path, ref: torch.Tensor, held: torch.Tensor, held_rows: pd.DataFrame,
                 train_rows: pd.DataFrame, metrics: Metrics, free: dict) -> dict[str, dict[str, float]]:
    """The model ladder (cxrgen.evaluate.model_ladder) scored and printed: SWD and C2ST against the first
    ``len(held)`` reference images, every feature space against all of them."""
    from cxrgen.evaluate.model_ladder import MODEL_RUNGS, ModelLadderSettings, model_rungs
    from cxrgen.train.short_run import train_from_scratch

    settings = ModelLadderSettings(sampler_steps=args.sampler_steps, blur_sigma=args.blur_sigma,
                                   noise_std=args.noise_std, seed=args.seed)
    train = load_images([folder / p for p in train_rows["image"]], args.size, desc="training (barely trained)")
    with tempfile.TemporaryDirectory() as tmp:
        barely = train_from_scratch(args.model, train, prompts_of(train_rows), args.work_dir or tmp,
                                    args.barely_steps, args.barely_batch, args.seed)
        sets = model_rungs(args.model, barely, held, prompts_of(held_rows), torch.Generator().manual_seed(args.seed),
                           settings)
    k = held.shape[0]
    values = score_rungs(ref[:k], sets, free) | score_rungs(ref, sets, metrics.in_feature_spaces())
    print_table(values, MODEL_RUNGS)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pediatric-pneumonia-224")
    parser.add_argument("--source", default="pediatric", help="the collection's source name in heldout_images.json")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluator", nargs="+", default=[str(DEFAULT_EVALUATOR)],
                        help="evaluator folders; the first one's heldout_images.json picks the images")
    parser.add_argument("--random-patients", action="store_true", help="random patient halves, not the evaluator's")
    parser.add_argument("--no-free", action="store_true", help="skip SWD and C2ST (evaluator rows only)")
    parser.add_argument("--c2st-folds", type=int, default=5)
    parser.add_argument("--c2st-epochs", type=int, default=20)
    parser.add_argument("--model-rungs", action="store_true", help="add the model ladder (samples: slow)")
    parser.add_argument("--model-n", type=int, default=64, help="held-out images (prompts) of the model ladder")
    parser.add_argument("--model", help="model for the model ladder (default: the packaged one)")
    parser.add_argument("--sampler-steps", type=int, help="sampler steps of both models (default: the model's own)")
    parser.add_argument("--barely-steps", type=int, default=30, help="steps of the barely trained run")
    parser.add_argument("--barely-batch", type=int, help="its batch size (default: the recipe's)")
    parser.add_argument("--barely-images", type=int, default=64, help="training images of the barely trained run")
    parser.add_argument("--blur-sigma", type=float, default=1.5, help="blur_noise rung: sigma in px at 64 px")
    parser.add_argument("--noise-std", type=float, default=0.03, help="blur_noise rung: noise std")
    parser.add_argument("--work-dir", help="where the barely trained run is written (a previous run there is replaced; default: a temporary folder)")
    parser.add_argument("--json", help="write the values here")
    args = parser.parse_args()
    folder = Path(args.data)
    listing = None if args.random_patients else Path(args.evaluator[0])
    ref_rows, held_rows, train_rows = three_disjoint_sets(folder, args.n, args.barely_images, args.seed, listing,
                                                          args.source)
    ref = load_images([folder / p for p in ref_rows["image"]], args.size, desc="reference")
    held = load_images([folder / p for p in held_rows["image"]], args.size, desc="held-out")
    evaluators = {Path(e).name: CXREvaluator.from_pretrained(e) for e in args.evaluator}
    metrics = Metrics(evaluators, C2STSettings(folds=args.c2st_folds, epochs=args.c2st_epochs))
    free = {} if args.no_free else metrics.free()
    gen = torch.Generator().manual_seed(args.seed)
    rungs = {r: degrade(held, r, gen) for r in RUNGS}
    out = {"degraded": score_rungs(ref, rungs, free) | score_rungs(ref, rungs, metrics.in_feature_spaces())}
    print_table(out["degraded"], RUNGS)
    if args.model_rungs:
        out["model"] = model_ladder(args, folder, ref, held[: args.model_n], held_rows[: args.model_n], train_rows,
                                    metrics, free)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "values": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
