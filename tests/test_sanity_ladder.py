"""The sanity ladder on the shared pediatric images: each realism metric must rank
held-out real < blurred + noised real < well-trained proxy < barely-trained proxy < noise.

What it uses (no trained generator is affordable on CPU here): 40 reference and 40 held-out
pediatric radiographs of disjoint patients, at 64 px; the rungs are the held-out images degraded
with increasing strength (cxrgen.evaluate.ladder). The proxies stand in for model samples.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
N, SIZE = 40, 64


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


@pytest.mark.xfail(strict=True, reason="the shipped 64 px evaluator's FID_cxr ranks blurred + noised held-out "
                   "images above untouched ones (measured 7.2 vs 14.1): see docs/evaluation_metrics.md")
def test_shipped_evaluator_fid_on_the_ladder(sets) -> None:
    evaluator = CXREvaluator.from_pretrained(DEFAULT_EVALUATOR).eval()
    values = run_ladder(*sets, {"fid": lambda r, x: fid_from_features(evaluator.features(r), evaluator.features(x))},
                        torch.Generator().manual_seed(0))["fid"]
    assert is_ordered(values), values
