"""Grid of an augmentation study's training images: per class, K real then K synthetic images.

Reads the study's JSON (``cxrgen augment-study ... --out DIR`` writes DIR/augment_study.json): the real
rows come from its manifest's train split (first K of each class), the synthetic ones from the table it
used (first K of each class). Never flips an image.

    .venv/bin/python benchmarks/augment_samples.py runs/augment-study/augment_study.json \
        --out docs/augmentation_samples.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image, to_unit_range
from cxrgen.data.manifest import read_manifest


def tile(path: str, size: int) -> Image.Image:
    unit = to_unit_range(load_image(path, ImageConfig(size=size))[0], ImageConfig(size=size))
    return Image.fromarray((unit.clamp(0, 1) * 255).round().byte().numpy(), mode="L")


def _rows(table: pd.DataFrame, name: str, cfg: dict) -> pd.DataFrame:
    """Rows of class ``name``: its value (multi-class), a 1 in its column, or "none": no 1 in any (multi-label)."""
    if cfg["label_column"] is not None:
        return table[table[cfg["label_column"]] == name]
    if name == "none":
        return table[(table[cfg["label_columns"]] == 0).all(axis=1)]
    return table[table[name] == 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="augment_study.json of a study (multi-class, or multi-label: a row per finding)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("-k", type=int, default=4, help="images per class and kind")
    parser.add_argument("--size", type=int, default=80, help="tile side in pixels")
    args = parser.parse_args()
    study = json.loads(Path(args.study).read_text())
    cfg, classes = study["config"], study["classes"]
    manifest = read_manifest(cfg["manifest"])
    real = manifest[manifest["split"] == cfg["train_split"]]
    synthetic = pd.read_csv(study["synthetic"]["table"])
    base = Path(study["synthetic"]["table"]).parent
    if cfg.get("view"):
        real = real[real["view"].astype(str).str.upper() == cfg["view"].upper()]
    if cfg["label_column"] is None:  # multi-label (the CT twin): a row per finding, then one with none of them
        classes = [*classes, "none"]
        real = real[real[cfg["label_columns"]].isin([0.0, 1.0]).all(axis=1)]
    grid = Image.new("L", (2 * args.k * args.size, len(classes) * args.size))
    for row, name in enumerate(classes):
        root = Path(cfg["image_root"] or Path(cfg["manifest"]).parent)
        paths = [str(p if Path(p).is_absolute() else root / p) for p in _rows(real, name, cfg)["image_path"][: args.k]]
        paths += [str(p if Path(p).is_absolute() else base / p)
                  for p in _rows(synthetic, name, cfg)["image_path"][: args.k]]
        for col, path in enumerate(paths):
            grid.paste(tile(path, args.size), (col * args.size, row * args.size))
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out}: rows {classes}; per row {args.k} real then {args.k} synthetic images")


if __name__ == "__main__":
    main()
