"""The sanity ladders on the shared pediatric images: each realism metric must rank known-good image
sets above known-bad ones.

The model ladder (issue 18's): held-out real < real blurred + noised < samples of the shipped default
model < samples of its recipe run 30 steps from scratch (barely trained, trained here) < noise, in
FID_cxr (the shipped 224 px evaluator) and C2ST; N_MODEL images per rung at 224 px, 5 sampler steps
(cxrgen.evaluate.model_ladder, cxrgen.train.short_run). Reference images are the evaluator's validate
split, held-out images its test split (patients neither the evaluator nor the default model trained on).

The degraded ladder, for SWD and C2ST: 40 reference and 40 held-out pediatric radiographs of disjoint
patients at 64 px, and the held-out images degraded with increasing strength (cxrgen.evaluate.ladder:
held-out < blur + noise < 4x detail loss + noise < 16x layout + blotches + noise < noise).
"""

from __future__ import annotations

import json
import os
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.data.readers.pediatric import pediatric_prompt
from cxrgen.evaluate.c2st import C2STSettings, c2st
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.fid import fid_from_features
from cxrgen.evaluate.ladder import RUNGS, degrade, is_ordered, is_ranked_to_ceiling, run_ladder
from cxrgen.evaluate.model_ladder import MODEL_RUNGS, ModelLadderSettings, model_rungs
from cxrgen.evaluate.run import DEFAULT_EVALUATOR
from cxrgen.evaluate.suite import load_images
from cxrgen.evaluate.swd import swd
from cxrgen.evaluate.train_ssl import HELDOUT_NAME
from cxrgen.train.short_run import train_from_scratch

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
N, SIZE = 40, 64
PEDIATRIC = "pediatric-pneumonia-224"
N_MODEL, N_TRAIN = 48, 32  # images per model rung (FID in the 256-d space is biased at this size, equally per rung)
# 5 sampler steps for both models; the barely trained model: the default recipe, 30 steps x batch 8 from scratch
MODEL_SETTINGS = ModelLadderSettings(sampler_steps=5, blur_sigma=1.5, noise_std=0.03)
BARELY_STEPS, BARELY_BATCH = 30, 8
C2ST_SETTINGS = C2STSettings(folds=4, epochs=10)


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
def model_ladder(shared_data, tmp_path_factory) -> dict[str, dict[str, float]]:
    """FID_cxr (shipped evaluator) and C2ST of every model rung. N_MODEL images each at the evaluator's
    224 px: reference = its validate split, held-out (and prompts) = its test split, the barely trained
    run's images = other patients (neither split); the evaluator and the default model saw none of the first two."""
    evaluator = CXREvaluator.from_pretrained(DEFAULT_EVALUATOR).eval()
    heldout = json.loads((DEFAULT_EVALUATOR / HELDOUT_NAME).read_text())["pediatric"]
    meta = pd.read_csv(shared_data / PEDIATRIC / "metadata.csv")
    name = meta["image"].map(os.path.basename)
    in_val, in_test = name.isin(set(heldout["validate"])), name.isin(set(heldout["test"]))
    rows = {"ref": meta[in_val].sample(N_MODEL, random_state=0), "held": meta[in_test].sample(N_MODEL, random_state=1),
            "train": meta[~in_val & ~in_test].sample(N_TRAIN, random_state=2)}
    assert not set(rows["ref"]["patient_key"]) & set(rows["held"]["patient_key"])
    assert not set(rows["train"]["patient_key"]) & (set(rows["ref"]["patient_key"]) | set(rows["held"]["patient_key"]))
    size = evaluator.cfg.image.size
    x = {k: load_images([shared_data / PEDIATRIC / p for p in r["image"]], size, progress=False) for k, r in rows.items()}
    prompts = {k: [pediatric_prompt(v, str(lab).strip().lower()) for v, lab in zip(r["view"], r["label"], strict=True)]
               for k, r in rows.items()}
    barely = train_from_scratch(None, x["train"], prompts["train"], tmp_path_factory.mktemp("barely_trained"),
                                BARELY_STEPS, BARELY_BATCH)
    rungs = model_rungs(None, barely, x["held"], prompts["held"], torch.Generator().manual_seed(0), MODEL_SETTINGS)
    with torch.no_grad():
        ref_features = evaluator.features(x["ref"])
        fid = {rung: fid_from_features(ref_features, evaluator.features(images)) for rung, images in rungs.items()}
    tests = {rung: c2st(x["ref"], images, C2ST_SETTINGS, torch.Generator().manual_seed(0)) for rung, images in rungs.items()}
    values = {"fid": fid, "c2st_cnn": {r: t["cnn"] for r, t in tests.items()},
              "c2st_linear": {r: t["linear"] for r, t in tests.items()}}
    print("model ladder:", json.dumps(values))  # shown with pytest -s (docs/evaluator.md's table)
    return values


def test_shipped_evaluator_fid_passes_the_model_ladder(model_ladder) -> None:
    """held-out < blurred + noised < default model < barely trained model < noise, strictly, in FID_cxr."""
    assert is_ordered(model_ladder["fid"], rungs=MODEL_RUNGS), model_ladder


def test_c2st_passes_the_model_ladder(model_ladder) -> None:
    """The CNN ranks every rung, strictly up to its ceiling (accuracy 1 = perfectly separable, where the
    barely trained model and noise both are); linear-on-pixels, blind to zero-mean noise and barely
    sensitive to blur by construction, must still rank the model rungs."""
    cnn, linear = model_ladder["c2st_cnn"], model_ladder["c2st_linear"]
    assert cnn["heldout"] < 0.7 and linear["heldout"] < 0.7, model_ladder  # near chance (48 + 48 images)
    assert is_ranked_to_ceiling(cnn, MODEL_RUNGS), model_ladder
    assert is_ranked_to_ceiling(linear, ("heldout", "default_model", "barely_trained", "noise")), model_ladder


def test_the_model_ladder_checks_fail_when_two_rungs_swap(model_ladder) -> None:
    """The assertions above can fail on these very values: swapping the image sets of any two rungs (which
    swaps their values: each set is scored on its own, with the same seed) breaks the FID order and, unless
    both are at C2ST's ceiling, the C2ST order."""
    for a, b in combinations(MODEL_RUNGS, 2):
        fid = model_ladder["fid"] | {a: model_ladder["fid"][b], b: model_ladder["fid"][a]}
        assert not is_ordered(fid, rungs=MODEL_RUNGS), (a, b)
        cnn = model_ladder["c2st_cnn"] | {a: model_ladder["c2st_cnn"][b], b: model_ladder["c2st_cnn"][a]}
        at_ceiling = min(model_ladder["c2st_cnn"][a], model_ladder["c2st_cnn"][b]) >= 0.98
        assert at_ceiling or not is_ranked_to_ceiling(cnn, MODEL_RUNGS), (a, b)
