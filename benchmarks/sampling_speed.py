"""Seconds to sample one 256 x 256 CXR with the default model's default settings on this machine's CPU.

    .venv/bin/python benchmarks/sampling_speed.py [--model DIR] [--threads 2] [--repeats 3]

Loads the model, samples one warm-up image, then times ``--repeats`` single-image calls of the
pipeline (text encoding, every denoiser step with guidance, decoding) and prints the median
seconds per image, the budget of the default-model issue (10 s on 2 CPU cores) and their ratio;
also the share of the time spent decoding. Exits 1 when the median is over the budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from cxrgen.pipeline import load_pipeline, resolve_model

BUDGET_S = 10.0
PROMPT = "PA chest radiograph. Large right pleural effusion."


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the packaged default model)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the budget is for 2 cores)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    pipe = load_pipeline(model)
    settings = pipe.sampling
    pipe(PROMPT, progress=False)  # warm-up: first-call allocations and kernel selection
    times = [_time(lambda: pipe(PROMPT, progress=False)) for _ in range(args.repeats)]
    latents = torch.randn(1, pipe.denoiser.spec.in_channels, *(2 * [pipe.denoiser.spec.sample_size]))
    with torch.no_grad():
        decode = statistics.median(_time(lambda: pipe.autoencoder.decode(latents)) for _ in range(args.repeats))
    median = statistics.median(times)
    print(f"model: {model}")
    print(f"settings: {settings.sampler}, {settings.steps} steps, guidance {settings.guidance_scale}, "
          f"{pipe.image_size}x{pipe.image_size}, {args.threads} threads, torch {torch.__version__}")
    print(f"seconds per image (median of {args.repeats}): {median:.2f}  (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"of which decoding: {decode:.2f} s")
    print(f"budget: {BUDGET_S:.0f} s -> ratio {median / BUDGET_S:.2f} of the budget")
    sys.exit(0 if median <= BUDGET_S else 1)


if __name__ == "__main__":
    main()
