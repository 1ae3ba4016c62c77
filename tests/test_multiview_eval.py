"""`cxrgen evaluate-multiview` end to end on a tiny twin: a tiny joint model over the report autoencoder,
the marks, the deliberate mistakes (which must fail them and score below the un-mistaken model), DICOM tags."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")

from cli_helpers import one_error_line  # noqa: E402

from cxrgen.cli import main  # noqa: E402
from cxrgen.data.twin_triplets import load_views, read_twin_triplets  # noqa: E402
from cxrgen.evaluate.multiview import MARKS, check_marks, load_multiview_pipeline, score_multiview  # noqa: E402
from cxrgen.text.report_ae import ReportCodec  # noqa: E402
from cxrgen.twin import write_twin_set  # noqa: E402

SIZE = 32
CASES = 6  # the easy tiny twin: half with an effusion, half without, all seen in training


class NearestTriplets:
    """Known good, with the multi-view pipeline's call interface: whatever is given picks the training triplet
    it matches (the same report; the nearest frontal view); a case with nothing given, a seeded random one."""

    modes = ("report->frontal", "report->lateral", "report->frontal+lateral", "frontal->lateral", "->lateral",
             "frontal->report")

    def __init__(self, twin: Path, size: int) -> None:
        table = read_twin_triplets(str(twin)).query("split == 'train'")
        self.frontal, self.lateral = load_views(table, size)
        self.reports, self.image_size = list(table["report"]), size

    def __call__(self, frontal=None, lateral=None, report=None, generate=(), num_samples=1, generator=None,
                 progress=False) -> SimpleNamespace:
        if report is not None:
            pick = torch.tensor([self.reports.index(r) for r in report])
        elif frontal is not None:
            pick = torch.cdist(frontal.flatten(1), self.frontal.flatten(1)).argmin(1)
        else:
            pick = torch.randint(len(self.reports), (num_samples,), generator=generator)
        return SimpleNamespace(frontal=self.frontal[pick], lateral=self.lateral[pick],
                               report=[self.reports[int(i)] for i in pick])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny twin, a tiny report autoencoder on its reports and a tiny joint model over both (CLI)."""
    root = tmp_path_factory.mktemp("mv_eval")
    twin = root / "twin"
    write_twin_set(16, SIZE, twin, seed=5, progress=False)
    table = pd.read_csv(twin / "twin.csv")
    sick, well = table[table.effusion_side != "none"], table[table.effusion_side == "none"]
    easy = pd.concat([sick.head(CASES // 2), well.head(CASES - CASES // 2)]).assign(split="train")
    easy.to_csv(twin / "twin.csv", index=False)
    base = {"data": {"twin_dirs": [str(twin)], "image_size": SIZE}, "progress": False}
    ae = {**base, "stage": "report_ae", "out_dir": str(root / "ae"),
          "report_ae": {"vocab_size": 300, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2,
                        "latent_tokens": 2, "latent_dim": 4, "steps": 40, "batch_size": 8, "lr": 3e-3,
                        "bow_weight": 1.0, "eval_reports": 4}}
    joint = {**base, "stage": "joint", "out_dir": str(root / "joint"),
             "joint": {"denoiser": "joint-uvit-tiny", "model_image_size": 64, "report_codec": str(root / "ae" / "report_ae"),
                       "steps": 20, "batch_size": 6, "lr": 3e-3, "warmup_steps": 5, "log_every": 10,
                       "sampling": {"sampler": "ddim", "steps": 4, "guidance_scale": 2.0}}}
    for name, cfg in (("ae", ae), ("joint", joint)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train-multiview", str(root / f"{name}.yaml")]) == 0
    return {"root": root, "twin": twin, "model": root / "joint" / "model"}


def test_marks_and_mistake_checks_read_the_scores() -> None:
    scores = {"report_to_frontal": {"laterality": 0.9}, "frontal_to_lateral": {"coherence_vs_ceiling": 0.5},
              "mistakes": {"reports_shuffled": {"laterality": 0.3}, "views_swapped": {"coherence_vs_ceiling": 0.6}}}
    checked = check_marks(scores)
    assert checked["marks"]["report_to_frontal.laterality"]["passed"]
    assert not checked["marks"]["frontal_to_lateral.coherence_vs_ceiling"]["passed"]
    assert checked["marks"]["frontal_to_report.finding_f1"]["value"] is None  # not scored: not passed
    assert set(checked["mistake_checks"]) == {"reports_shuffled", "views_swapped"}
    assert checked["mistake_checks"]["reports_shuffled"]["below_model"]
    assert not checked["mistake_checks"]["views_swapped"]["below_model"]  # 0.6 > the model's 0.5
    assert checked["all_mistakes_fail"] and not checked["all_marks_passed"]
    scores["frontal_to_report"] = {"finding_f1": 0.7, "retrieval_baseline": {"finding_f1": 0.75}}
    margin = check_marks(scores)["marks"]["frontal_to_report.finding_f1_minus_retrieval"]
    assert margin["value"] == pytest.approx(-0.05) and not margin["passed"]


def test_bag_of_words_loss_needs_the_latent(tmp_path: Path) -> None:
    from cxrgen.text.scratch import train_tokenizer

    reports = ["Left pleural effusion.", "Right pleural effusion.", "No pleural effusion."] * 8
    tok = train_tokenizer(reports, 300, tmp_path)
    codec = ReportCodec.build(tok, torch.Generator().manual_seed(0), max_length=16, width=16, encoder_depth=1,
                              decoder_depth=1, heads=2, latent_tokens=2, latent_dim=4, bag_of_words=True)
    ids, mask = codec.tokenize(reports[:3])
    opt = torch.optim.Adam(codec.model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = codec.model(ids, mask)["bow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    codec.model.eval()
    with torch.no_grad():
        latent = codec.model.posterior(ids, mask)[0]
        own = codec.model.bag_of_words_loss(latent, ids, mask)
        swapped = codec.model.bag_of_words_loss(latent[[1, 2, 0]], ids, mask)
    assert own < swapped - 0.1  # each report's words are read from its own latent, sides included


@pytest.mark.slow
def test_known_good_passes_every_mark_and_each_deliberate_mistake_fails(tiny: dict[str, Path]) -> None:
    scores, grid = score_multiview(NearestTriplets(tiny["twin"], SIZE), tiny["twin"], n=CASES, split="train",
                                   batch=CASES, progress=False)
    checked = check_marks(scores)
    assert checked["all_marks_passed"], checked["marks"]
    assert set(checked["mistake_checks"]) == {"views_swapped", "reports_shuffled", "reports_shuffled_f1",
                                              "no_frontal_given"}
    for name, check in checked["mistake_checks"].items():
        assert check["fails_mark"] and check["below_model"], (name, check)
    assert grid["frontal->lateral"].shape == (CASES, 1, SIZE, SIZE)
    joint = scores["report_to_frontal_lateral"]  # each report picks its own triplet: the pair is the real pair
    assert joint["together"] == joint["separately"] == joint["real_pairs"]
    assert joint["together"]["views_agree"] > 0.8 and joint["together"]["lateral_effusion_presence"] == 1.0


@pytest.mark.slow
def test_alignment_scores_generated_views_beside_real_and_shuffled_pairs(tiny: dict[str, Path]) -> None:
    from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel

    tok = ReportCodec.from_pretrained(tiny["root"] / "ae" / "report_ae").tokenizer
    torch.manual_seed(0)
    enc = AlignedModel(AlignedEncoders(len(tok), image_size=SIZE, embed_dim=8, image_width=4, text_width=16,
                                       text_depth=1, heads=2), tok)
    scores, _ = score_multiview(NearestTriplets(tiny["twin"], SIZE), tiny["twin"], n=CASES, split="train",
                                batch=CASES, progress=False, aligned=enc)
    for view in ("frontal", "lateral"):  # the known-good model returns the real views: same score as real pairs
        block = scores["alignment"][f"report_to_{view}"]
        assert block["generated"] == pytest.approx(block["real_pairs"]) and -1 <= block["real_shuffled"] <= 1
    retrieved = scores["frontal_to_report"]["retrieval_baseline"]
    assert 0 <= retrieved["finding_f1"] <= 1 and "side_accuracy" in retrieved


@pytest.mark.slow
def test_evaluate_multiview_cli_marks_and_deliberate_mistakes(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["evaluate-multiview", str(tiny["model"]), "--twin", str(tiny["twin"]), "--split", "train",
                 "--n", str(CASES), "--batch-size", str(CASES), "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (tmp_path / "ev" / "report.md").read_text().count("| views_swapped |") == 1
    assert (tmp_path / "ev" / "grid.png").is_file() and result["skipped"] == []
    assert set(result["marks"]) == set(MARKS)
    checks = result["mistake_checks"]
    assert set(checks) == {"views_swapped", "reports_shuffled", "reports_shuffled_f1", "no_frontal_given"}
    assert all(c["fails_mark"] for c in checks.values()), checks  # every deliberate mistake fails its mark
    assert "mark >= 0.85" in capsys.readouterr().out
    assert main(["evaluate-multiview", str(tmp_path), "--twin", str(tiny["twin"])]) == 2
    assert "model_index.json" in one_error_line(capsys)


@pytest.mark.slow
def test_generated_views_as_dicom_record_given_and_generated(tiny: dict[str, Path], tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from cxrgen.dicom import read_synthetic_metadata

    frontal = next((tiny["twin"] / "images").glob("*_pa.png"))
    assert main(["generate", "--model", str(tiny["model"]), "--frontal", str(frontal), "--to", "lateral,report",
                 "--out", str(tmp_path), "--dicom", "--no-progress"]) == 0
    path = tmp_path / "multiview_0_lateral.dcm"
    ds = pydicom.dcmread(path)
    assert ds.ViewPosition == "LL" and "given: frontal" in ds.SeriesDescription
    meta = read_synthetic_metadata(path)
    assert meta["given"] == ["frontal"] and meta["generated"] == ["lateral", "report"] and meta["role"] == "generated"
    assert not (tmp_path / "multiview_0_lateral.png").exists()  # the DICOM replaces the generated view's PNG
    assert json.loads((tmp_path / "multiview_0_report.json").read_text())["report_role"] == "generated"
    pipe = load_multiview_pipeline(tiny["model"])
    assert type(pipe.report_codec).__name__ == "ReportCodec"  # the report autoencoder, saved inside the model
    scores, _ = score_multiview(pipe, tiny["twin"], n=2, split="train", batch=2, progress=False)
    assert 0.0 <= scores["frontal_to_report"]["finding_f1"] <= 1.0
