"""CoDi XR stage 1: multi-view data, the report autoencoder, the aligned encoders and `cxrgen train-multiview`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from multiview_fixture import write_synthetic_twin
from torch.nn import functional as F

from cxrgen.cli import main
from cxrgen.data.multiview import MultiviewDataset, read_adult_pairs, read_triplets, report_corpus, split_table
from cxrgen.errors import ConfigError, DataError
from cxrgen.multiview.aligned import AlignedModel
from cxrgen.multiview.contrastive import alignment_score, info_nce, nearest, retrieval_recall
from cxrgen.text.report_ae import ReportCodec
from cxrgen.text.report_metrics import finding_agreement, report_scores
from cxrgen.text.scratch import train_tokenizer

REPORTS = ["FINDINGS: Left pleural effusion. Heart size is normal.\nIMPRESSION: Left pleural effusion.",
           "FINDINGS: Right pneumothorax. The heart is enlarged.\nIMPRESSION: Right pneumothorax.",
           "FINDINGS: No pleural effusion. Heart size is normal.\nIMPRESSION: Normal chest."]


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    return write_synthetic_twin(tmp_path_factory.mktemp("mv") / "twin")


@pytest.fixture(scope="module")
def trained(twin_dir: Path, tmp_path_factory) -> dict:
    """Both stages through the CLI on the synthetic twin: tiny sizes, a few steps."""
    root = tmp_path_factory.mktemp("mv_runs")
    base = {"data": {"twin_dirs": [str(twin_dir)], "image_size": 32}, "progress": False}
    stages = {"report_ae": {"report_ae": {"vocab_size": 300, "width": 32, "encoder_depth": 1, "decoder_depth": 1,
                                          "heads": 2, "latent_tokens": 2, "latent_dim": 4, "steps": 150,
                                          "batch_size": 8, "lr": 3e-3, "eval_reports": 8, "beams": 2,
                                          "eval_truth": True}},
              "aligned": {"aligned": {"vocab_size": 300, "embed_dim": 16, "image_width": 4, "text_width": 16,
                                      "text_depth": 1, "heads": 2, "steps": 60, "batch_size": 16, "lr": 3e-3}}}
    out = {}
    for stage, extra in stages.items():
        path = root / f"{stage}.yaml"
        path.write_text(yaml.safe_dump({**base, **extra, "stage": stage}))
        assert main(["train-multiview", str(path), "--out", str(root / stage)]) == 0
        out[stage] = json.loads((root / stage / "metrics.json").read_text())
    out["root"] = root
    return out


# --- data ----------------------------------------------------------------------------------------
def test_twin_triplets_pair_both_views_of_a_study_with_its_report_and_truth(twin_dir):
    table = read_triplets([twin_dir])
    assert len(table) == 48 and set(table["split"]) == {"train", "validate", "test"}
    row = table.iloc[1]
    assert row["frontal_path"].endswith(f"{row['study_id']}_pa.png")
    assert row["lateral_path"].endswith(f"{row['study_id']}_lateral.png")
    assert row["effusion_side"] in row["report"].lower()
    assert (split_table(table, "test")["wording"] == "heldout").all()
    data = MultiviewDataset(split_table(table, "train"), 32)
    item = data[0]
    assert item["frontal"].shape == item["lateral"].shape == (1, 32, 32)
    assert -1.0 <= float(item["frontal"].min()) and float(item["frontal"].max()) <= 1.0
    assert not torch.equal(item["frontal"], item["lateral"])
    corpus = report_corpus(table)
    assert sum(map(len, corpus.values())) == 48 and len(corpus["test"]) == 8


def test_missing_twin_folder_and_unknown_split_are_explained(tmp_path):
    with pytest.raises(DataError, match="cxrgen twin"):
        read_triplets([tmp_path])
    with pytest.raises(DataError, match="no multi-view studies"):
        read_triplets([])
    with pytest.raises(DataError, match="split"):
        split_table(read_triplets([write_synthetic_twin(tmp_path / "t", n=6)]), "dev")


@pytest.mark.shared_data
def test_adult_set_pairs_are_same_patient_same_day_frontal_and_lateral(shared_data):
    import pandas as pd

    root = shared_data / "covid-cxr-256"
    pairs = read_adult_pairs(root)
    meta = pd.read_csv(root / "metadata.csv")
    assert len(pairs) >= 30
    for row in pairs.itertuples():
        fr = meta[meta["image"] == Path(row.frontal_path).relative_to(root).as_posix()]
        lat = meta[meta["image"] == Path(row.lateral_path).relative_to(root).as_posix()]
        assert (lat["view"] == "L").all() and fr["view"].isin(["PA", "AP", "AP Supine"]).all()
        same_day = set(zip(fr["patient_id"], fr["offset_days"], strict=True))
        assert same_day & set(zip(lat["patient_id"], lat["offset_days"], strict=True))
    assert pairs.groupby("study_id")["split"].nunique().max() == 1


# --- contrastive maths ---------------------------------------------------------------------------
def _pairs(n: int = 16, dim: int = 8, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    b = F.normalize(a + noise * torch.randn(n, dim, generator=g), dim=-1)
    return a, b


def test_info_nce_is_symmetric_transposed_and_rank_sensitive():
    a, b = _pairs()
    loss = info_nce(a, b, 0.1)
    assert torch.allclose(loss, info_nce(b, a, 0.1))
    logits = a @ b.T / 0.1
    target = torch.arange(16)
    rows_only = F.cross_entropy(logits, target)
    expected = 0.5 * (rows_only + F.cross_entropy(logits.T, target))
    assert torch.allclose(loss, expected)
    b_skew = b.clone()
    b_skew[0] = a[1]  # makes the logits asymmetric: rows-only (untransposed) would give another value
    assert not torch.allclose(info_nce(a, b_skew, 0.1), F.cross_entropy(a @ b_skew.T / 0.1, target))
    shuffled = b[torch.roll(torch.arange(16), 1)]
    assert info_nce(a, shuffled, 0.1) > loss + 1.0


def test_retrieval_recall_and_alignment_rank_true_pairs_above_shuffled():
    a, b = _pairs()
    assert retrieval_recall(a, b, ks=(1, 5)) == {"recall@1": 1.0, "recall@5": 1.0}
    assert torch.equal(nearest(a, b, k=2)[:, 0], torch.arange(16))
    shuffled = b[torch.roll(torch.arange(16), 3)]
    assert retrieval_recall(a, shuffled)["recall@1"] < 0.2
    assert alignment_score(a, b) > alignment_score(a, shuffled) + 0.5
    with pytest.raises(DataError, match="paired"):
        info_nce(a, b[:3], 0.1)


# --- report autoencoder --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory) -> ReportCodec:
    tok = train_tokenizer(REPORTS * 4, 300, tmp_path_factory.mktemp("tok"))
    return ReportCodec.build(tok, torch.Generator().manual_seed(0), max_length=32, width=16, encoder_depth=1,
                             decoder_depth=1, heads=2, latent_tokens=3, latent_dim=4)


def test_report_codec_shapes_save_load_round_trip_and_seeded_init(tiny_codec, tmp_path):
    latent = tiny_codec.encode(REPORTS)
    assert latent.shape == (3, 3, 4) and tiny_codec.latent_shape == (3, 4)
    tiny_codec.model.register_to_config(latent_scale=2.5)
    tiny_codec.save_pretrained(tmp_path / "ae")
    loaded = ReportCodec.from_pretrained(tmp_path / "ae")
    assert loaded.latent_scale == 2.5
    assert torch.allclose(loaded.encode(REPORTS), tiny_codec.encode(REPORTS))
    assert torch.allclose(loaded.encode(REPORTS), 2.5 * latent)
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    assert loaded.decode(z, max_length=12) == tiny_codec.decode(z, max_length=12)
    again = ReportCodec.build(tiny_codec.tokenizer, torch.Generator().manual_seed(0), max_length=32, width=16,
                              encoder_depth=1, decoder_depth=1, heads=2, latent_tokens=3, latent_dim=4)
    assert torch.allclose(again.encode(REPORTS) * 2.5, tiny_codec.encode(REPORTS))
    tiny_codec.model.register_to_config(latent_scale=1.0)


def test_beam_search_with_one_beam_is_greedy_and_bad_input_is_refused(tiny_codec, tmp_path):
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    raw = z / tiny_codec.latent_scale
    assert torch.equal(tiny_codec.model.generate(raw, beams=1, max_length=10), tiny_codec.model._beam(raw, 1, 10))
    assert len(tiny_codec.decode(z, beams=3, max_length=10)) == 2
    with pytest.raises(DataError, match="empty"):
        tiny_codec.encode(["FINDINGS: ok", "  "])
    with pytest.raises(DataError, match=r"expected \(B, 3, 4\)"):
        tiny_codec.decode(torch.zeros(2, 4, 3))
    with pytest.raises(ConfigError, match="no report autoencoder"):
        ReportCodec.from_pretrained(tmp_path)


def test_finding_agreement_ranks_a_copy_above_a_contradiction():
    same = finding_agreement(REPORTS, REPORTS)
    assert same["agreement"] == 1.0 and same["exact"] == 1.0 and same["f1"] == 1.0 and same["side_accuracy"] == 1.0
    wrong = ["FINDINGS: Right pleural effusion. Heart size is normal.", REPORTS[2], REPORTS[1]]
    worse = finding_agreement(wrong, REPORTS)
    assert worse["f1"] < 0.5 and worse["side_accuracy"] == 0.0 and worse["exact"] < 0.5  # sides are not in "exact"
    scores = report_scores(REPORTS, REPORTS)
    if scores["bleu4"] is not None:  # the `reports` extra
        assert scores["bleu4"] > 99 and scores["rougeL"] == pytest.approx(1.0)
        assert report_scores(wrong, REPORTS)["bleu4"] < scores["bleu4"]


# --- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_ae_stage_trains_scales_and_reconstructs(trained):
    metrics = trained["report_ae"]
    codec = ReportCodec.from_pretrained(metrics["model"])
    texts = [e["original"] for e in metrics["eval"]["twin"]["examples"]]
    latent = codec.encode(texts)
    assert latent.shape == (len(texts), 2, 4)
    assert metrics["latent_scale"] > 0 and metrics["final_ce"] < 2.0
    assert torch.allclose(latent.std(), torch.tensor(1.0), atol=0.5)  # measured scale: about unit variance
    decoded = [e["decoded"] for e in metrics["eval"]["twin"]["examples"]]
    assert len(set(decoded)) > 1, f"the decoder ignores the latent (posterior collapse): {decoded}"
    assert metrics["eval"]["twin"]["bleu4"] is None or metrics["eval"]["twin"]["bleu4"] > 20


def test_report_ae_stage_scores_reconstructions_against_the_twin_truth(trained, twin_dir):
    from cxrgen.evaluate.report_ae import twin_reports_and_truths
    from cxrgen.evaluate.twin_report import truth_report_scores

    vs_truth = trained["report_ae"]["eval"]["twin"]["vs_truth"]
    assert vs_truth["n"] == 8 and vs_truth["references_vs_truth"]["finding_f1"] == 1.0
    codec = ReportCodec.from_pretrained(trained["report_ae"]["model"])
    reports, truths = twin_reports_and_truths([twin_dir], "test", 8)
    decoded = codec.decode(codec.encode(reports), beams=2)
    assert vs_truth["finding_f1"] == truth_report_scores(decoded, truths)["finding_f1"]
    flipped = [{**t, "effusion": {"left": "right", "right": "left"}.get(t["effusion"], t["effusion"])} for t in truths]
    assert truth_report_scores(reports, flipped)["side_accuracy"] < 0.5  # the references' sides are read


@pytest.mark.slow
def test_aligned_stage_aligns_views_and_a_shuffled_report_scores_lower(trained, twin_dir):
    metrics = trained["aligned"]
    model = AlignedModel.from_pretrained(metrics["model"])
    data = MultiviewDataset(split_table(read_triplets([twin_dir]), "train"), 32)
    reports = model.embed_reports(data.reports)
    frontal = model.embed_images(data.frontal, "frontal")
    shuffled = reports[torch.roll(torch.arange(len(data)), 1)]  # neighbours differ in effusion side
    assert alignment_score(frontal, reports) > alignment_score(frontal, shuffled) + 0.05
    held_out = metrics["eval"]["twin/validate"]
    assert held_out["view_check_accuracy"] >= 0.9
    assert held_out["alignment"]["frontal-report"]["true"] > held_out["alignment"]["frontal-report"]["shuffled"]
    retrieved = model.retrieve_reports(data.frontal, "frontal", data.reports)
    same_side = [r.split(".")[0] == t.split(".")[0] for r, t in zip(retrieved, data.reports, strict=True)]
    assert sum(same_side) / len(same_side) > 0.8  # the retrieval baseline states the right effusion side
    assert model.warn_if_wrong_view(data.lateral[:4], "frontal") == [0, 1, 2, 3]
    assert model.warn_if_wrong_view(data.frontal[:4], "frontal") == []
    with pytest.raises(DataError, match=r"\(B, 1, 32, 32\)"):
        model.embed_images(torch.zeros(2, 3, 32, 32), "frontal")


def test_train_multiview_refuses_unknown_stage_and_keys(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"stage": "bogus"}))
    assert main(["train-multiview", str(path)]) != 0
    assert "stage" in capsys.readouterr().err


def test_shipped_multiview_configs_load_and_name_their_stage():
    from importlib.resources import files

    from cxrgen.config import load_config
    from cxrgen.config.multiview import MultiviewTrainConfig

    for name, stage in (("multiview-report-ae.yaml", "report_ae"), ("multiview-aligned.yaml", "aligned"),
                        ("multiview-aligned-sites.yaml", "aligned")):
        cfg = load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / name))
        assert cfg.stage == stage and cfg.threads == 1
    sites = load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / "multiview-aligned-sites.yaml"))
    assert sites.aligned.site_weight > 0 and sites.aligned.init_from and "frontal" not in sites.aligned.freeze
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(MultiviewTrainConfig, None, ["aligned.batch_size=1"])


def test_report_ae_training_continues_from_a_saved_codec(tiny_codec, tmp_path):
    from cxrgen.config.multiview import MultiviewTrainConfig, ReportAEStageConfig
    from cxrgen.train.report_ae import run_report_ae

    tiny_codec.save_pretrained(tmp_path / "start")
    stage = ReportAEStageConfig(init_from=str(tmp_path / "start"), steps=3, batch_size=2, eval_reports=2)
    corpora = {"toy": {"train": REPORTS, "validate": [], "test": REPORTS[:2]}}
    metrics = run_report_ae(MultiviewTrainConfig(report_ae=stage, progress=False), corpora, tmp_path / "out")
    loaded = ReportCodec.from_pretrained(metrics["model"])
    assert loaded.latent_shape == (3, 4)  # the saved model's sizes, not the config's defaults (8, 16)
    before = dict(tiny_codec.model.named_parameters())["lm_head.weight"]
    assert not torch.equal(dict(loaded.model.named_parameters())["lm_head.weight"], before)
    assert set(metrics["eval"]["toy"]) >= {"finding_f1", "bleu4", "rougeL", "shuffled_floor"}


def test_report_metrics_install_no_root_log_handler() -> None:
    """ROUGE once made every program log to the stderr of the moment (rouge-score's root logging.info)."""
    pytest.importorskip("rouge_score")
    import subprocess
    import sys

    code = ("import logging; from cxrgen.text.report_metrics import bleu_rouge; "
            "s = bleu_rouge(['small left effusion'], ['small right effusion']); "
            "print(len(logging.root.handlers), s['rougeL'] is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "True"]
