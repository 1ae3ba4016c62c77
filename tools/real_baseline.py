"""The realism metrics of real images against real images: the floor a model's numbers are read against.

    PYTHONPATH=src .venv/bin/python tools/real_baseline.py out/covid/manifest.parquet --n 64 --size 256

N random training rows of a manifest play the "generated" set: C2ST and SWD against the held-out rows
(test, validate), as `cxrgen evaluate` compares generated images; PRDC and FID in the shipped
evaluator's feature space against all other rows (the reference set minus the N).
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
    parser.add_argument("manifest")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = manifest_paths(args.manifest, ("train",))
    heldout = manifest_paths(args.manifest, ("test", "validate"))
    pick = set(np.random.default_rng(args.seed).choice(len(train), args.n, replace=False).tolist())
    fake = [p for i, p in enumerate(train) if i in pick]
    reference = [p for i, p in enumerate(train) if i not in pick] + heldout
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
