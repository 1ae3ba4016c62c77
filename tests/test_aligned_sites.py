"""``aligned.site_weight`` / ``init_from`` / ``freeze``: the frontal tower learns where nodules are from the twin's
recorded sites (cxrgen.multiview.sites), starting from trained encoders with the other parts fixed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrgen.cli import main
from cxrgen.config import ImageConfig, load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.images import save_png
from cxrgen.data.multiview import MultiviewDataset, read_triplets, split_table
from cxrgen.errors import ConfigError, DataError
from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
from cxrgen.multiview.sites import SiteHead, site_loss, site_scores, site_targets
from cxrgen.text.scratch import train_tokenizer
from cxrgen.train.aligned import SiteTruth, evaluate_sites, fit_aligned

SIZE = 64  # the towers' last feature map is 4 x 4


def _row(**kw) -> dict:
    base = {"source": "twin", "twin_size": 64, "nodule_lobe": "none", "nodule_pa_col": "", "nodule_pa_row": "",
            "nodule_pa_radius": ""}
    return base | kw


def test_targets_mark_the_cells_the_nodule_disc_overlaps() -> None:
    table = pd.DataFrame([_row(nodule_lobe="right_lower", nodule_pa_col=10.0, nodule_pa_row=50.0, nodule_pa_radius=2.0),
                          _row(nodule_lobe="left_upper", nodule_pa_col=40.0, nodule_pa_row=15.5, nodule_pa_radius=1.0),
                          _row(), _row(source="adult", twin_size=float("nan"), nodule_lobe=""),
                          _row(nodule_lobe="right_upper")])  # a nodule without a recorded site: unknown
    targets, known = site_targets(table, SIZE, 4)
    assert known.tolist() == [True, True, True, False, False]
    assert targets[0].nonzero().tolist() == [[3, 0]]  # row 50 -> cell row 3, column 10 -> cell column 0
    assert targets[1].nonzero().tolist() == [[0, 2], [1, 2]]  # on the border of two cells: both
    assert targets[2].sum() == 0 and targets[3].sum() == 0
    half, _ = site_targets(table, 32, 4)  # the same places at half the resolution
    torch.testing.assert_close(half, targets)
    with pytest.raises(DataError, match="multiple"):
        site_targets(table, 30, 4)
    assert site_targets(table.drop(columns="twin_size"), SIZE, 4)[1].sum() == 0  # a set without sites


def test_loss_skips_unknown_studies_and_scores_rank_and_read_sides() -> None:
    targets = torch.zeros(4, 4, 4)
    targets[0, 1, 0] = 1.0  # image left: the patient's right
    targets[1, 2, 3] = 1.0
    known = torch.tensor([True, True, True, False])
    good = torch.full((4, 4, 4), -5.0)
    good[0, 1, 0] = good[1, 2, 3] = 5.0
    good[3] = 50.0  # an unknown study never counts
    lobes = ["right_upper", "left_lower", "none", "left_upper"]
    scores = site_scores(good, targets, known, lobes)
    assert scores == {"n": 3, "n_nodule": 2, "presence_auroc": 1.0, "side_accuracy": 1.0}
    mirrored = site_scores(good.flip(-1), targets, known, lobes)  # the sides swapped: every side wrong
    assert mirrored["side_accuracy"] == 0.0
    assert site_loss(good, targets, known, 3.0) < site_loss(good.flip(-1), targets, known, 3.0)
    torch.testing.assert_close(site_loss(good, targets, known, 3.0), site_loss(good[:3], targets[:3], known[:3], 3.0))
    assert site_loss(good, targets, torch.zeros(4, dtype=torch.bool), 3.0) == 0.0


def write_blob_twin(out: Path, n: int = 96, seed: int = 0) -> Path:
    """A synthetic twin at 64 px whose frontal views hold a bright blob (a "nodule") in half the studies, with
    its site recorded as ``cxrgen twin`` records it; the reports state the nodule's side."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    unit = ImageConfig(size=SIZE, low=0.0, high=1.0)
    rows = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        stem = f"twin_{seed}_{i:06d}"
        split = "train" if i < 3 * n // 4 else "validate"
        pa = 0.3 + 0.05 * rng.standard_normal((SIZE, SIZE))
        lateral = 0.3 + 0.05 * rng.standard_normal((SIZE, SIZE))
        site = {f"nodule_{v}_{p}": "" for v in ("pa", "lateral") for p in ("col", "row", "radius")}
        lobe = "none"
        if i % 2:
            lobe = "right_upper" if i % 4 == 1 else "left_lower"
            col = rng.uniform(6, 26) if lobe.startswith("right") else rng.uniform(38, 58)
            row = rng.uniform(6, 58)
            pa = pa + 0.5 * ((xx - col) ** 2 + (yy - row) ** 2 <= 9)
            site |= {"nodule_pa_col": round(col, 2), "nodule_pa_row": round(row, 2), "nodule_pa_radius": 3.0}
        for view, image in (("pa", pa), ("lateral", lateral)):
            save_png(np.clip(image, 0, 1).astype(np.float32), out / "images" / f"{stem}_{view}.png", unit, bits=8)
        side = lobe.split("_")[0]
        text = f"A nodule in the {side} lung." if lobe != "none" else "No nodule."
        rows.append({"study_id": stem, "patient_id": stem, "split": split, "findings": text, "impression": text,
                     "pa_path": f"images/{stem}_pa.png", "lateral_path": f"images/{stem}_lateral.png",
                     "effusion_side": "none", "effusion_size": "", "pneumothorax_side": "none",
                     "consolidation_lobe": "none", "cardiomegaly": False, "nodule_lobe": lobe,
                     "nodule_mm": 0.0 if lobe == "none" else 10.0, "wording": "train",
                     **site})
    pd.DataFrame(rows).to_csv(out / "twin.csv", index=False)
    (out / "twin.json").write_text(json.dumps({"n": n, "size": SIZE, "seed": seed}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> tuple[Path, AlignedModel]:
    root = tmp_path_factory.mktemp("sites")
    twin = write_blob_twin(root / "twin")
    data = MultiviewDataset(split_table(read_triplets([twin]), "train"), SIZE)
    tokenizer = train_tokenizer(data.reports, 300, root / "tok")
    torch.manual_seed(0)
    encoders = AlignedEncoders(vocab_size=len(tokenizer), image_size=SIZE, embed_dim=16, image_width=4, text_width=16,
                               text_depth=1, heads=2, max_length=32)
    AlignedModel(encoders, tokenizer).save_pretrained(root / "aligned")
    return twin, AlignedModel.from_pretrained(root / "aligned")


def _config(*sets: str) -> MultiviewTrainConfig:
    return load_config(MultiviewTrainConfig, None, ["progress=false", "aligned.batch_size=24", *sets])


def test_site_training_teaches_the_frontal_tower_alone_where_the_nodules_are(blobs) -> None:
    twin, model = blobs
    table = read_triplets([twin])
    train, held = (MultiviewDataset(split_table(table, s), SIZE) for s in ("train", "validate"))
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    head = SiteHead(model.encoders.frontal.head.in_features)
    chance = evaluate_sites(model, held, head)
    history: list[dict[str, float]] = []
    cfg = _config("aligned.site_weight=1.0", "aligned.steps=150", "aligned.lr=0.003", "aligned.init_from=x",
                  "aligned.freeze=[lateral,report,view]")
    fit_aligned(model, train, cfg, history, site_head=head)
    first, last = (sum(h["sites"] for h in part) / len(part) for part in (history[:10], history[-10:]))
    assert last < first / 2, (first, last)
    after = evaluate_sites(model, held, head)
    assert after["n_nodule"] == 12 and after["presence_auroc"] > 0.9 and after["side_accuracy"] > 0.9, after
    assert chance["presence_auroc"] < 0.8, chance  # an untrained head does not know
    state = model.encoders.state_dict()
    for name, value in state.items():
        moved = not torch.equal(value, before[name])
        assert moved == (name.startswith("frontal.") or name == "log_inv_temperature"), name
    assert all(p.requires_grad for p in model.encoders.parameters())  # frozen only while fitting


def test_the_site_loss_is_off_by_default_and_needs_site_truth(blobs, tmp_path: Path) -> None:
    twin, model = blobs
    plain = MultiviewTrainConfig().aligned
    assert plain.site_weight == 0.0 and plain.init_from is None and plain.freeze == ()
    history: list[dict[str, float]] = []
    data = MultiviewDataset(split_table(read_triplets([twin]), "train"), SIZE)
    fit_aligned(model, data, _config("aligned.steps=2"), history)
    assert "sites" not in history[0]
    table = pd.read_csv(twin / "twin.csv", keep_default_na=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "images").symlink_to(twin / "images")
    table.drop(columns=[c for c in table.columns if c.startswith("nodule_") and c != "nodule_lobe"]).to_csv(
        old / "twin.csv", index=False)  # a twin set written before the sites were recorded
    old_data = MultiviewDataset(split_table(read_triplets([old]), "train"), SIZE)
    with pytest.raises(DataError, match="cxrgen twin"):
        SiteTruth(old_data, 32)
    for bad, match in ((["aligned.freeze=[lateral]"], "init_from"), (["aligned.init_from=x", "aligned.freeze=[eyes]"],
                       "freeze"), (["aligned.init_from=x", "aligned.freeze=[frontal,lateral,report,view]"], "freeze"),
                       (["aligned.site_weight=-1"], "site_weight")):
        with pytest.raises(ConfigError, match=match):
            _config(*bad)


def test_cli_fine_tunes_trained_encoders_and_reports_the_sites(blobs, tmp_path: Path) -> None:
    twin, _ = blobs
    init = twin.parent / "aligned"
    config = {"stage": "aligned", "data": {"twin_dirs": [str(twin)], "image_size": SIZE},
              "aligned": {"init_from": str(init), "freeze": ["lateral", "report", "view"], "site_weight": 1.0,
                          "steps": 3, "batch_size": 8}, "progress": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train-multiview", str(path), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    sites = metrics["eval"]["twin/validate"]["nodule_sites"]
    assert sites["n"] == 24 and sites["n_nodule"] == 12 and 0.0 <= sites["side_accuracy"] <= 1.0
    assert sites["0-15 mm"]["n"] == 12 and sites[">= 25 mm"]["n"] == 0  # 10 mm blobs
    tuned = AlignedModel.from_pretrained(tmp_path / "run" / "aligned")
    start = AlignedModel.from_pretrained(init)
    assert len(tuned.tokenizer) == len(start.tokenizer)
    assert torch.equal(tuned.encoders.lateral.head.weight, start.encoders.lateral.head.weight)
    assert not torch.equal(tuned.encoders.frontal.head.weight, start.encoders.frontal.head.weight)
    assert not math.isnan(metrics["final_loss"])
