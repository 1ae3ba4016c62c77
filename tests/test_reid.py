"""Re-identification (privacy): the Siamese network, its training on same-patient pairs, its evaluate block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.cli import main
from cxrgen.config import EvalConfig, ImageConfig
from cxrgen.data.images import load_image
from cxrgen.data.manifest import new_manifest, write_manifest
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.reid import ReidNet, load_reid, reid_scores
from cxrgen.evaluate.suite import FeatureCache, ImageSets, _reid
from cxrgen.evaluate.train_reid import pair_loss, pk_batches

SIZE = 32
N_PATIENTS = 16  # covid patients with at least two frontal images: 12 for training, 4 held out


def tiny_reid(seed: int = 0) -> ReidNet:
    torch.manual_seed(seed)  # test-side seeding of a random tiny network
    return ReidNet(image_size=SIZE, width=4, embed_dim=8).eval()


def test_save_load_gives_the_same_embeddings(tmp_path: Path) -> None:
    model = tiny_reid()
    images = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    model.save_pretrained(tmp_path / "reid")
    loaded = load_reid(tmp_path / "reid")
    assert torch.allclose(model.embed(images), loaded.embed(images), atol=1e-6)
    assert torch.allclose(loaded.embed(images).norm(dim=1), torch.ones(3), atol=1e-5)  # unit embeddings
    with pytest.raises(ConfigError, match="train-reid"):
        load_reid(tmp_path / "nothing")


def test_pk_batches_hold_same_patient_pairs_and_single_negatives() -> None:
    identity = np.array([0, 0, 0, 1, 1, 2, 3, 4, 4])  # patients 2 and 3 have one image
    batches = pk_batches(identity, patients=2, per_patient=2, rng=np.random.default_rng(0))
    seen = {int(identity[i]) for b in batches for i in b}
    assert {0, 1, 4} <= seen and len(batches) == 2
    for batch in batches:
        ids = identity[batch]
        assert any((ids == p).sum() == 2 for p in (0, 1, 4))  # a same-patient pair in every batch
    strata = np.array(["a", "a", "a", "b", "b", "b", "a", "b", "b"])  # patients 0, 3 in a; 1, 2, 4 in b
    for batch in pk_batches(identity, 2, 2, np.random.default_rng(0), strata):
        assert len(set(strata[batch])) == 1  # hard negatives: one finding per batch
    with pytest.raises(DataError, match="two images"):
        pk_batches(np.arange(4), 2, 2, np.random.default_rng(0))


def test_pair_loss_is_lower_when_embeddings_match_identities() -> None:
    model = tiny_reid()
    identity = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]), dim=1)
    bad = good[[0, 2, 1, 3]]
    assert pair_loss(model, good, identity) < pair_loss(model, bad, identity)


def test_exact_copies_score_above_other_images() -> None:
    model = tiny_reid()
    train = torch.rand(6, 1, SIZE, SIZE) * 2 - 1
    others = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    gen_emb, train_emb = model.embed(torch.cat([train[:2], others])), model.embed(train)
    result = reid_scores(model, gen_emb, train_emb, model.embed(others), quantile=0.5)
    assert result["top"][0]["generated"] in (0, 1) and result["top"][0]["train"] == result["top"][0]["generated"]
    copy_score = torch.sigmoid(model.logits_from_cosine(torch.tensor(1.0))).item()  # cosine 1: the same image
    assert result["max"] == pytest.approx(copy_score, abs=1e-5) and result["max"] >= result["heldout"]["max"]
    assert result["copy_score"] == pytest.approx(copy_score)
    assert result["n_generated"] == 6 and result["n_train"] == 6 and result["heldout"]["n"] == 4


# --- a tiny training run on shared covid images -------------------------------------------------
@pytest.fixture(scope="module")
def covid_reid(shared_data: Path, tmp_path_factory) -> dict:
    """12 training and 4 held-out covid patients (two frontal images each), a tiny net trained 8 epochs."""
    root = tmp_path_factory.mktemp("reid")
    meta = pd.read_csv(shared_data / "covid-cxr-256" / "metadata.csv")
    meta = meta[meta["view"].isin(["PA", "AP"])]
    patients = [p for p, n in meta["patient_id"].value_counts().sort_index().items() if n >= 2][:N_PATIENTS]
    rows = []
    for i, patient in enumerate(patients):
        for image in meta[meta["patient_id"] == patient]["image"].iloc[:2]:
            rows.append({"source": "covid", "image_path": str(shared_data / "covid-cxr-256" / image),
                         "patient_id": str(patient), "prompt": "chest radiograph",
                         "split": "train" if i < 12 else "test"})
    manifest = write_manifest(new_manifest(rows), root / "manifest.csv")
    out = root / "reid"
    args = ["train-reid", str(Path(__file__).parents[1] / "src/cxrgen/configs/reid-small.yaml"), "--out", str(out),
            "--set", f"manifests=[{manifest}]", "--set", f"image_size={SIZE}", "--set", "width=4",
            "--set", "embed_dim=16", "--set", "epochs=8", "--set", "patients_per_batch=4", "--set", "progress=false",
            "--set", "device=cpu"]
    assert main(args) == 0
    return {"root": root, "out": out, "rows": rows, "metrics": json.loads((out / "metrics.json").read_text())}


def test_training_records_heldout_auroc_and_learns(covid_reid: dict) -> None:
    metrics = covid_reid["metrics"]
    assert metrics["train_patients"] == 12 and metrics["heldout_patients"] == 4
    held = metrics["heldout"]["reid"]
    assert metrics["heldout"]["same_finding"]["positive_pairs"] == 4
    assert held["positive_pairs"] == 4 and 0.0 <= held["auroc"] <= 1.0
    losses = [h["loss"] for h in metrics["history"]]
    assert min(losses[-3:]) < losses[0]  # the pair loss goes down
    assert (covid_reid["out"] / "config.json").is_file() and (covid_reid["out"] / "train_config.yaml").is_file()


def test_trained_metric_ranks_a_noised_training_image_above_another_patient(covid_reid: dict) -> None:
    model = load_reid(covid_reid["out"])
    train = [r for r in covid_reid["rows"] if r["split"] == "train"]
    originals = torch.stack([load_image(r["image_path"], ImageConfig(size=SIZE)) for r in train[::2]])  # (12, 1, S, S)
    noised = (originals + 0.05 * torch.randn(originals.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    others = originals.roll(1, dims=0)  # another patient's image beside each original
    assert (model.probability(noised, originals) > model.probability(others, originals)).all()


def test_evaluate_block_flags_copies_of_training_images(covid_reid: dict) -> None:
    rows = covid_reid["rows"]
    train = [Path(r["image_path"]) for r in rows if r["split"] == "train"]
    heldout = [Path(r["image_path"]) for r in rows if r["split"] == "test"]
    cfg = EvalConfig(reid_model=str(covid_reid["out"]), copy_quantile=0.9, progress=False)
    feats = FeatureCache(SIZE, 8, progress=False)
    copies = torch.stack([load_image(p, ImageConfig(size=SIZE)) for p in train[:4]])
    sets = ImageSets(generated=[], real=[], train=train, heldout=heldout)
    result = _reid(cfg, feats, copies, [Path(f"g{i}.png") for i in range(4)], sets)
    assert result["n_generated"] == 4 and result["n_train"] == len(train) and result["heldout"]["n"] == len(heldout)
    assert result["mean"] > result["heldout"]["mean"] and result["above_threshold"] == 1.0
    assert result["model_heldout_auroc"] == covid_reid["metrics"]["heldout"]["reid"]["auroc"]
    missing = _reid(EvalConfig(reid_model=str(covid_reid["root"] / "none")), feats, copies, ["g"] * 4, sets)
    assert missing["mean"] is None and "train-reid" in missing["note"]
