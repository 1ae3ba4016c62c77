"""The realism metrics of real images against real images: the floor a model's numbers are read against.

    PYTHONPATH=src .venv/bin/python tools/real_baseline.py out/covid/manifest.parquet --n 64 --size 256

N random training rows of a manifest play the "generated" set: C2ST and SWD against the held-out rows
(test, validate), as `cxrgen evaluate` compares generated images; PRDC and FID in the shipped
evaluator's feature space against all other rows (the reference set minus the N).

With several manifests, N / len(manifests) training rows come from each; with `--reference TABLE`
(e.g. the `sets/real.csv` that benchmarks/denoisers.py writes) every metric compares with that
table's images instead, as the benchmark does:

    PYTHONPATH=src .venv/bin/python tools/real_baseline.py out/covid/manifest.parquet \
        out/pediatric/manifest.parquet --n 64 --size 256 --reference runs/bench/samplers/sets/real.csv
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.fid import fid_from_features
from cxrgen.evaluate.prdc import prdc
from cxrgen.evaluate.run import DEFAULT_EVALUATOR, manifest_paths
from cxrgen.evaluate.suite import load_images
from cxrgen.evaluate.swd import swd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", nargs="+")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", help="table of real images that every metric compares with")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    fake, rest, heldout = [], [], []
    for manifest in args.manifest:
        train = manifest_paths(manifest, ("train",))
        pick = set(rng.choice(len(train), args.n // len(args.manifest), replace=False).tolist())
        fake += [p for i, p in enumerate(train) if i in pick]
        rest += [p for i, p in enumerate(train) if i not in pick]
        heldout += manifest_paths(manifest, ("test", "validate"))
    reference = rest + heldout
    if args.reference:
        heldout = reference = manifest_paths(args.reference)
    x_fake, x_held = load_images(fake, args.size), load_images(heldout, args.size)
    x_ref = load_images(reference, args.size)
    g = torch.Generator().manual_seed(args.seed)
    test = c2st(x_held, x_fake, C2STSettings(), g)
    evaluator = CXREvaluator.from_pretrained(DEFAULT_EVALUATOR).eval()
    f_fake, f_ref = (torch.cat([evaluator.features(b) for b in x.split(64)]) for x in (x_fake, x_ref))
    out = {"n": args.n, "n_heldout": len(heldout), "n_reference": len(reference),
           "c2st": {k: test[k] for k in ("cnn", "cnn_ci", "linear", "linear_ci", "n")},
           "swd": swd(x_held, x_fake, generator=g),
           "prdc_cxr": prdc(f_ref, f_fake), "fid_cxr": fid_from_features(f_ref, f_fake)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
