"""Baselines of the trained aligned encoders: image -> report by retrieval, and the view check on real images.

    .venv/bin/python benchmarks/multiview_baselines.py --aligned out/multiview/aligned/aligned \
        --twin out/twin64 --adult ../shared/data/covid-cxr-256 --out out/multiview/baselines.json

Retrieval baseline (the one the issue asks beside generated reports): for each held-out twin study's
frontal (or lateral) image, the most similar *training* report in the aligned space, scored against
the study's own report with ``cxrgen.text.report_metrics.report_scores``; the floor is the same
references shuffled. View check on real adult images: every frontal (PA, AP, AP Supine) and lateral
view of covid-cxr-256, split by whether the patient's studies were in the aligned training pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from cxrgen.config import ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.multiview import FRONTAL_VIEWS, LATERAL_VIEW, MultiviewDataset, hash_split, read_triplets, split_table
from cxrgen.multiview.aligned import AlignedModel
from cxrgen.text.report_metrics import report_scores


def retrieval_baseline(model: AlignedModel, twin: Path, size: int) -> dict:
    """Per held-out split and view: report scores of the nearest training report, and the shuffled floor."""
    table = read_triplets([twin])
    gallery = split_table(table, "train")["report"].tolist()
    out = {}
    g = torch.Generator().manual_seed(0)
    for split in ("validate", "test"):
        data = MultiviewDataset(split_table(table, split), size)
        shuffled = [data.reports[i] for i in torch.randperm(len(data), generator=g).tolist()]
        out[split] = {"n": len(data), "shuffled_floor": report_scores(shuffled, data.reports)}
        for view in ("frontal", "lateral"):
            images = data.frontal if view == "frontal" else data.lateral
            out[split][view] = report_scores(model.retrieve_reports(images, view, gallery), data.reports)
    return out


def adult_view_check(model: AlignedModel, root: Path, size: int) -> dict:
    """View-check accuracy on every adult frontal and lateral image, for patients in / not in the training split."""
    meta = pd.read_csv(root / "metadata.csv")
    meta = meta[meta["view"].isin(FRONTAL_VIEWS | {LATERAL_VIEW})]
    cfg = ImageConfig(size=size)
    images = torch.stack([load_image(root / p, cfg) for p in meta["image"]])  # (N, 1, S, S)
    p_lateral = model.lateral_probability(images)
    correct = ((p_lateral > 0.5) == torch.tensor((meta["view"] == LATERAL_VIEW).to_numpy())).numpy()
    trained = meta["patient_id"].astype(str).map(hash_split).eq("train").to_numpy()
    out = {}
    for name, keep in (("all", trained | ~trained), ("training_patients", trained), ("other_patients", ~trained)):
        lat = keep & (meta["view"] == LATERAL_VIEW).to_numpy()
        out[name] = {"frontal_accuracy": float(correct[keep & ~lat].mean()), "n_frontal": int((keep & ~lat).sum()),
                     "lateral_accuracy": float(correct[lat].mean()) if lat.any() else None, "n_lateral": int(lat.sum())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aligned", required=True, help="folder of a trained AlignedModel")
    p.add_argument("--twin", required=True, help="the twin folder it was trained on")
    p.add_argument("--adult", help="covid-cxr-256 folder: the view check on real images")
    p.add_argument("--out", help="JSON file (default: print)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = AlignedModel.from_pretrained(args.aligned)
    size = model.encoders.config.image_size
    result = {"retrieval_baseline": retrieval_baseline(model, Path(args.twin), size)}
    if args.adult:
        result["adult_view_check"] = adult_view_check(model, Path(args.adult), size)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
