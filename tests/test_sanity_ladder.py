"""The sanity ladder on the shared pediatric images: each realism metric must rank
held-out real < blurred + noised real < well-trained proxy < barely-trained proxy < noise.

What it uses (no trained generator is affordable on CPU here): 40 reference and 40 held-out
pediatric radiographs of disjoint patients, at 64 px, for SWD and C2ST; for FID_cxr in the shipped
evaluator's feature space, N_FID reference images from the evaluator's validate split and N_FID held-out
images from its test split (patients it never saw in training), at its 224 px. The rungs are the
held-out images degraded with increasing strength (cxrgen.evaluate.ladder). The proxies stand in
for model samples.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.fid import fid_from_features
from cxrgen.evaluate.ladder import RUNGS, degrade, is_ordered, run_ladder
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.suite import load_images
from cxrgen.evaluate.swd import swd
from cxrgen.evaluate.train_ssl import HELDOUT_NAME

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
N, SIZE = 40, 64
N_FID = 128  # per set: FID in the 256-d feature space is biased at this size, but equally for every rung
PEDIATRIC = "pediatric-pneumonia-224"


@pytest.fixture(scope="module")
def sets(shared_data) -> tuple[torch.Tensor, torch.Tensor]:
    folder = shared_data / "pediatric-pneumonia-224"
    meta = pd.read_csv(folder / "metadata.csv")
    patients = np.random.default_rng(0).permutation(meta["patient_key"].unique())
    in_ref = meta["patient_key"].isin(set(patients[: len(patients) // 2]))
    ref, held = meta[in_ref].sample(N, random_state=0), meta[~in_ref].sample(N, random_state=1)
    return (load_images([folder / p for p in ref["image"]], SIZE, progress=False),
            load_images([folder / p for p in held["image"]], SIZE, progress=False))


def test_rungs_keep_shape_and_range_and_get_worse_in_pixels(sets) -> None:
    _, held = sets
    g = torch.Generator().manual_seed(0)
    errors = []
    for rung in RUNGS:
        x = degrade(held, rung, g)
        assert x.shape == held.shape and x.min() >= -1 and x.max() <= 1
        errors.append(float((x - held).abs().mean()))
    assert errors[0] == 0 and errors == sorted(errors)


def test_swd_passes_the_ladder(sets) -> None:
    values = run_ladder(*sets, {"swd": lambda r, x: swd(r, x, generator=torch.Generator().manual_seed(0))["mean"]},
                        torch.Generator().manual_seed(0))["swd"]
    assert is_ordered(values), values


def test_c2st_passes_the_ladder(sets) -> None:
    settings = C2STSettings(folds=4, epochs=10)
    results: dict[int, tuple[torch.Tensor, dict]] = {}  # the tensor is kept so that its id is not reused

    def run(kind: str):
        def metric(r: torch.Tensor, x: torch.Tensor) -> float:
            if id(x) not in results:
                results[id(x)] = (x, c2st(r, x, settings, torch.Generator().manual_seed(0)))
            return results[id(x)][1][kind]
        return metric

    values = run_ladder(*sets, {"cnn": run("cnn"), "linear": run("linear")}, torch.Generator().manual_seed(0))
    for kind in ("cnn", "linear"):
        v = values[kind]
        assert v["heldout"] < 0.7, v  # held-out real: near chance (40 + 40 images: CI about +-0.11)
        assert v["well_trained_proxy"] > v["heldout"] + 0.05 and v["barely_trained_proxy"] > 0.9, v
        assert v["noise"] > 0.95, v
        # monotone up to 0.1: the mild rung is within chance of held-out at 40 + 40 images (measured 0.45-0.51
        # for both), and the CNN's accuracy moves by up to 0.06 between runs with the same seed on CPU
        assert is_ordered({r: v[r] + 0.1 * i for i, r in enumerate(RUNGS)}), v


@pytest.fixture(scope="module")
def evaluator_fid(shared_data) -> dict[str, float]:
    """FID_cxr of every rung in the shipped evaluator's space: N_FID images of its validate split (reference)
    and of its test split (held-out; disjoint patients, never trained on), at its input size."""
    evaluator = CXREvaluator.from_pretrained(DEFAULT_EVALUATOR).eval()
    heldout = json.loads((DEFAULT_EVALUATOR / HELDOUT_NAME).read_text())["pediatric"]
    meta = pd.read_csv(shared_data / PEDIATRIC / "metadata.csv")
    name = meta["image"].map(os.path.basename)
    ref = meta[name.isin(set(heldout["validate"]))].sample(N_FID, random_state=0)
    held = meta[name.isin(set(heldout["test"]))].sample(N_FID, random_state=1)
    assert not set(ref["patient_key"]) & set(held["patient_key"])
    size = evaluator.cfg.image.size
    ref_x = load_images([shared_data / PEDIATRIC / p for p in ref["image"]], size, progress=False)
    held_x = load_images([shared_data / PEDIATRIC / p for p in held["image"]], size, progress=False)
    with torch.no_grad():
        def features(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([evaluator.features(b) for b in x.split(64)])

        ref_features = features(ref_x)
        return run_ladder(ref_x, held_x, {"fid": lambda _, x: fid_from_features(ref_features, features(x))},
                          torch.Generator().manual_seed(0))["fid"]


def test_shipped_evaluator_fid_sees_blur_noise_and_each_proxy(evaluator_fid) -> None:
    """What the 64 px evaluator failed (blurred + noised real scored better than real) and each proxy alone."""
    for proxy in ("well_trained_proxy", "barely_trained_proxy"):
        assert is_ordered(evaluator_fid, rungs=("heldout", "blur_noise", proxy, "noise")), evaluator_fid


@pytest.mark.xfail(strict=True, reason="the 224 px SimCLR evaluator ranks the two proxies the wrong way round "
                   "(measured FID well_trained_proxy 17.0 > barely_trained_proxy 16.6; held-out 0.63, blur_noise 2.9, "
                   "noise 2491): both carry the same noise (std 0.1), which dominates its features; "
                   "see docs/evaluator.md")
def test_shipped_evaluator_fid_passes_the_ladder(evaluator_fid) -> None:
    assert is_ordered(evaluator_fid), evaluator_fid
