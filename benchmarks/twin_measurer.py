"""Accuracy of the twin's measurers per finding and view on fresh renders (what the test asserts >= 98 %).

    .venv/bin/python benchmarks/twin_measurer.py --n 500 --sizes 64 128    # seed 2024, as the test

Prints one JSON line per size and view: accuracy of each field of ``cxrgen.twin.compare`` (the PA's
``ctr_error`` is the mean absolute CTR error) and the seconds per case (render + both measurements).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cxrgen.twin import accuracy, compare, measure, twin_sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        rows = {"pa": [], "lateral": []}
        twin_sample(10_000, size, args.seed)
        measure(twin_sample(10_001, size, args.seed).pa, "pa")  # warm-up: CT, atoms, templates
        start = time.perf_counter()
        for i in range(args.n):
            case = twin_sample(i, size, args.seed)
            for view in rows:
                rows[view].append(compare(measure(case.view(view), view), case.findings, case.ctr))
        sec = (time.perf_counter() - start) / args.n
        for view, found in rows.items():
            acc = {k: round(v, 4) for k, v in accuracy(found).items()}
            print(json.dumps({"size": size, "view": view, "n": args.n, **acc, "seconds_per_case": round(sec, 3)}))


if __name__ == "__main__":
    main()
