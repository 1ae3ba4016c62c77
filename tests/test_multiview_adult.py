"""`cxrgen evaluate-multiview --adult`: realism per view and frontal -> report on a tiny fake adult folder.

The folder mimics covid-cxr-256's metadata.csv (PA and L rows, clinical notes, patients with two frontal
views and one lateral). Known good: a model that returns the real images of the prompts' own rows scores
exactly as the real-vs-real floor; known bad (noise images) scores worse than the floor on every metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import one_error_line
from multiview_fixture import _frontal, _lateral, write_synthetic_twin

from cxrgen.cli import main
from cxrgen.config import ImageConfig
from cxrgen.data.images import save_png
from cxrgen.errors import DataError
from cxrgen.evaluate.adult_multiview import (
    adult_report_lines,
    adult_report_rows,
    load_adult_images,
    read_adult_views,
    realism_table,
    score_adult,
)
from cxrgen.evaluate.evaluator import CXREvaluator
from cxrgen.evaluate.extractors import CXREvaluatorExtractor
from cxrgen.evaluate.run import DEFAULT_EVALUATOR

SIZE = 32
PATIENTS = 24
SIDES = ("left", "right", "none")


def write_fake_adult(root: Path) -> Path:
    """``PATIENTS`` patients, each a PA, an AP and an L view of one day; notes on the PA row only (the others
    take the same-day note), a CT-only note for every sixth patient (no imaging sentences: no report)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    unit = ImageConfig(size=SIZE, low=0.0, high=1.0)
    rows = []
    for p in range(PATIENTS):
        side, big = SIDES[p % 3], p % 2 == 1
        finding = "no pleural effusion" if side == "none" else f"a {side} pleural effusion"
        note = (f"Patient {p} had a CT scan of the abdomen." if p % 6 == 5 else
                f"Patient {p} presented with cough. The chest x-ray shows {finding}.")
        for view, draw in (("PA", _frontal), ("AP", _frontal), ("L", _lateral)):
            name = f"images/p{p:02d}_{view}.png"
            save_png(draw(side, big, SIZE, rng), root / name, unit, bits=8)
            rows.append({"image": name, "patient_id": f"p{p:02d}", "view": view, "finding": "COVID-19",
                         "offset_days": 0, "clinical_notes": note if view == "PA" else np.nan})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def adult(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_adult(tmp_path_factory.mktemp("adult") / "covid")


@pytest.fixture(scope="module")
def extractor() -> CXREvaluatorExtractor:
    return CXREvaluatorExtractor(CXREvaluator.from_pretrained(DEFAULT_EVALUATOR))


class RowsModel:
    """Known good: report -> view returns, in order, the real images of that view whose note each report is
    (the prompts' own rows); frontal -> report the note of the nearest real frontal view."""

    modes = ("report->frontal", "report->lateral", "frontal->report")
    image_size = SIZE

    def __init__(self, table: pd.DataFrame, noise: bool = False) -> None:
        self.table, self.noise, self.used = table, noise, {v: [] for v in ("frontal", "lateral")}
        rows = table[(table["view"] == "frontal") & (table["report"] != "")]
        self.frontal, self.notes = load_adult_images(list(rows["path"]), SIZE), list(rows["report"])

    def _image(self, view: str, report: str) -> torch.Tensor:
        rows = self.table[(self.table["view"] == view) & (self.table["half"] == "A") & (self.table["report"] == report)]
        path = next(p for p in rows["path"] if p not in self.used[view])
        self.used[view].append(path)
        return load_adult_images([path], SIZE)[0]

    def __call__(self, frontal=None, lateral=None, report=None, generate=(), num_samples=1, generator=None,
                 progress=False) -> SimpleNamespace:
        out = SimpleNamespace()
        for view in ("frontal", "lateral"):
            if view in generate:
                images = torch.stack([self._image(view, r) for r in report])
                setattr(out, view, torch.rand(images.shape, generator=generator) * 2 - 1 if self.noise else images)
        if "report" in generate:
            out.report = [self.notes[int(i)] for i in torch.cdist(frontal.flatten(1), self.frontal.flatten(1)).argmin(1)]
        return out


def test_read_adult_views_splits_by_patient_and_fills_same_day_notes(adult: Path) -> None:
    table = read_adult_views(adult)
    assert len(table) == 3 * PATIENTS and set(table["view"]) == {"frontal", "lateral"}
    assert (table["view"] == "frontal").sum() == 2 * PATIENTS  # PA and AP are frontal, L lateral
    by_patient = table.groupby("patient_id")
    assert (by_patient["split"].nunique() == 1).all() and (by_patient["half"].nunique() == 1).all()
    assert set(table["half"]) == {"A", "B"}
    p0 = table[table["patient_id"] == "p00"]
    assert (p0["report"] == "The chest x-ray shows a left pleural effusion.").all()  # imaging sentences, same day
    assert (table.loc[table["patient_id"] == "p05", "report"] == "").all()  # a CT-only note: no report
    held = adult_report_rows(table, 100)
    assert len(held) >= 2 and set(held["split"]) <= {"validate", "test"} and held["patient_id"].is_unique


def test_missing_adult_folder_and_metadata_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; give --adult"):
        read_adult_views(tmp_path / "nowhere")
    with pytest.raises(DataError, match="metadata.csv does not exist"):
        read_adult_views(tmp_path)
    pd.DataFrame({"image": ["a.png"]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DataError, match="lacks the columns"):
        read_adult_views(tmp_path)


def test_real_floor_ranks_below_noise_and_known_good_scores_as_the_floor(adult: Path, extractor) -> None:
    table = read_adult_views(adult)
    block, grid = score_adult(RowsModel(table), table, extractor, n=100, batch=4, progress=False)
    for view in ("frontal", "lateral"):
        rows = block[view]["rows"]
        n = block[view]["n_generated"]
        assert n == ((table["view"] == view) & (table["half"] == "A") & (table["report"] != "")).sum()
        assert {r["n"] for r in rows.values()} == {n} and rows["noise"]["n_reference"] == block[view]["n_reference"]
        floor, noise, gen = rows["real_other_half"], rows["noise"], rows["generated"]
        assert floor["fid"] < noise["fid"] and floor["kid"] < noise["kid"] and floor["swd"] < noise["swd"], view
        assert floor["precision"] > noise["precision"]
        assert gen["fid"] == pytest.approx(floor["fid"]) and gen["swd"] == pytest.approx(floor["swd"])
        assert torch.equal(grid[f"adult {view} (generated)"], grid[f"adult {view} (real_other_half)"])
    report = block["frontal_to_report"]  # the known good returns each held-out image's own note
    assert report["n"] == len(adult_report_rows(table, 100)) and report["bleu4"] == pytest.approx(100.0)
    assert report["finding_agreement"] == 1.0 and report["shuffled_notes"]["bleu4"] < 100.0
    assert report["other_notes"] == report["shuffled_notes"]  # the known good's reports are the notes themselves
    assert block["skipped"] == [] and set(block["cpu_seconds"]) == {"frontal", "lateral", "frontal_to_report"}


def test_a_noise_generator_scores_worse_than_the_floor(adult: Path, extractor) -> None:
    table = read_adult_views(adult)
    block, _ = score_adult(RowsModel(table, noise=True), table, extractor, n=100, batch=4, progress=False)
    for view in ("frontal", "lateral"):
        rows = block[view]["rows"]
        assert rows["generated"]["fid"] > rows["real_other_half"]["fid"]
        assert rows["generated"]["kid"] > rows["real_other_half"]["kid"]


def test_unserved_modes_are_skipped_and_small_sets_give_none(adult: Path, extractor) -> None:
    table = read_adult_views(adult)
    model = RowsModel(table)
    model.modes = ("report->frontal",)
    twin = {"frontal": torch.zeros(3, 1, SIZE, SIZE), "lateral": torch.zeros(3, 1, SIZE, SIZE)}
    block, _ = score_adult(model, table, extractor, n=4, batch=4, progress=False, twin_views=twin)
    assert block["skipped"] == ["report->lateral", "frontal->report"] and "frontal_to_report" not in block
    assert "generated" in block["frontal"]["rows"] and "generated" not in block["lateral"]["rows"]
    twin_row = block["lateral"]["rows"]["twin_drr"]
    assert twin_row["n"] == 3 and twin_row["swd"] is None and twin_row["precision"] is None  # too few for SWD, PRDC
    assert twin_row["fid"] is not None
    ref = load_adult_images(list(table["path"][:6]), SIZE)
    assert realism_table(extractor, ref, {"same": ref})["same"]["fid"] == pytest.approx(0.0, abs=1e-3)


def test_evaluate_multiview_cli_adds_real_data(adult: Path, tmp_path: Path, capsys) -> None:
    from test_codi import tiny_pipeline

    pytest.importorskip("sacrebleu", reason="the reports extra is not installed")
    twin = write_synthetic_twin(tmp_path / "twin", n=12, size=32)
    (twin / "twin.json").write_text(json.dumps({"size": 32}))
    table = pd.read_csv(twin / "twin.csv").assign(pneumothorax_size="none", heart_scale=1.0, ctr=0.45, nodule_mm=0)
    table.loc[table["effusion_side"] == "none", "effusion_size"] = "none"
    table.to_csv(twin / "twin.csv", index=False)  # the truth columns the fixture leaves out
    tiny_pipeline().save_pretrained(tmp_path / "codi")
    args = ["evaluate-multiview", str(tmp_path / "codi"), "--twin", str(twin), "--split", "train", "--n", "2",
            "--batch-size", "8", "--out", str(tmp_path / "ev"), "--no-progress", "--adult-n", "8"]
    assert main([*args, "--adult", str(tmp_path / "nowhere")]) == 2
    assert "give --adult" in one_error_line(capsys)
    assert not (tmp_path / "ev" / "metrics.json").exists()  # failed before any sampling
    assert main([*args, "--adult", str(adult), "--evaluator", str(tmp_path)]) == 2
    assert "train-evaluator" in one_error_line(capsys)  # a folder that holds no evaluator
    assert main([*args, "--adult", str(adult)]) == 0
    real = json.loads((tmp_path / "ev" / "metrics.json").read_text())["real_data"]
    assert real["frontal"]["n_generated"] <= 8 and set(real["frontal"]["rows"]) == {"real_other_half", "generated",
                                                                                    "twin_drr", "noise"}
    assert real["feature_space"] == "cxrgen-evaluator" and real["frontal_to_report"]["n"] >= 2
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## Real data: the adult set" in report and "| noise |" in report
    assert (tmp_path / "ev" / "adult_grid.png").is_file()
    assert "adult lateral FID_cxr" in capsys.readouterr().out


def test_retrieval_baseline_takes_the_training_patients_notes(adult: Path, extractor, tmp_path: Path) -> None:
    from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
    from cxrgen.text.scratch import train_tokenizer

    table = read_adult_views(adult)
    train_notes = set(table.loc[(table["split"] == "train") & (table["report"] != ""), "report"])
    tok = train_tokenizer(sorted(set(table["report"]) - {""}) * 2, 300, tmp_path)
    torch.manual_seed(0)
    aligned = AlignedModel(AlignedEncoders(len(tok), image_size=16, embed_dim=8, image_width=4, text_width=16,
                                           text_depth=1, heads=2), tok)
    model = RowsModel(table)
    model.modes = ()  # the baseline needs no model: scored for a model that serves no frontal -> report too
    block, _ = score_adult(model, table, extractor, n=100, batch=4, progress=False, aligned=aligned)
    baseline = block["frontal_to_report"]["retrieval_baseline"]
    assert baseline["gallery"] == len(train_notes) and baseline["n"] == block["frontal_to_report"]["n"]
    assert 0.0 <= baseline["finding_agreement"] <= 1.0 and baseline["bleu4"] is not None
    assert "bleu4" not in block["frontal_to_report"] and "frontal->report" in block["skipped"]
    assert "| retrieval (" in "\n".join(adult_report_lines(block))
