"""How often does the phantom measurer read fresh renders right? (The README's measurer figures.)

    .venv/bin/python benchmarks/phantom_measurer.py --n 600 --sizes 32 64 --seed 777

Renders ``--n`` random phantoms per size with a seed never used to choose the measurer's cuts,
measures each and prints the share read right per finding (and with all findings right) plus the
mean absolute error of the cardiothoracic ratio.
"""

from __future__ import annotations

import argparse
import json

from cxrgen.phantom import accuracy, compare, measure, phantom_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=600, help="phantoms per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes in pixels")
    parser.add_argument("--seed", type=int, default=777, help="seed of the renders")
    args = parser.parse_args()
    for size in args.sizes:
        rows = []
        for i in range(args.n):
            image, truth, _ = phantom_sample(i, size, args.seed)
            rows.append(compare(measure(image), truth))
        print(f"{size} px, {args.n} renders: {json.dumps({k: round(v, 3) for k, v in accuracy(rows).items()})}")


if __name__ == "__main__":
    main()
