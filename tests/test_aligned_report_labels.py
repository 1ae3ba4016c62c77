"""``aligned.label_weight``: the aligned image towers also learn the labeler's reading of their report (findings
and sides) through training-only linear heads (cxrgen.multiview.report_labels)."""

from __future__ import annotations

import logging

import pytest
import torch
from multiview_fixture import write_synthetic_twin

from cxrgen.config import load_config
from cxrgen.config.multiview import MultiviewTrainConfig
from cxrgen.data.multiview import MultiviewDataset, read_triplets, split_table
from cxrgen.errors import ConfigError
from cxrgen.multiview.aligned import AlignedEncoders, AlignedModel
from cxrgen.multiview.report_labels import report_targets, target_names
from cxrgen.text.scratch import train_tokenizer
from cxrgen.train.aligned import batch_loss, fit_aligned, label_heads


def test_targets_read_findings_and_their_sides_from_the_report() -> None:
    names = target_names()
    t = report_targets(["Small right pleural effusion. A 12 mm nodule in the left upper lobe. No pneumothorax.",
                        "Bilateral pleural effusions.", "No pleural effusion."])
    on = lambda row: {names[i] for i in t[row].nonzero().flatten().tolist()}  # noqa: E731
    assert {"Pleural Effusion:present", "Pleural Effusion:right", "Lung Lesion:present", "Lung Lesion:left"} <= on(0)
    assert "Pleural Effusion:left" not in on(0) and not any(n.startswith("Pneumothorax") for n in on(0))
    assert {"Pleural Effusion:left", "Pleural Effusion:right"} <= on(1)  # bilateral: both sides
    assert not any(n.startswith("Pleural Effusion") for n in on(2))  # negated: absent
    assert t.shape == (3, len(names)) and len(names) == 3 * 14


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[AlignedModel, MultiviewDataset]:
    twin = write_synthetic_twin(tmp_path_factory.mktemp("labels") / "twin")
    data = MultiviewDataset(split_table(read_triplets([twin]), "train"), 32)
    tokenizer = train_tokenizer(data.reports, 300, tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    encoders = AlignedEncoders(vocab_size=len(tokenizer), image_size=32, embed_dim=16, image_width=4, text_width=16,
                               text_depth=1, heads=2, max_length=64)
    return AlignedModel(encoders, tokenizer), data


def test_the_label_loss_is_off_by_default_and_reaches_the_image_towers(setup) -> None:
    model, data = setup
    assert MultiviewTrainConfig().aligned.label_weight == 0.0
    pick = list(range(8))
    plain, parts = batch_loss(model, data, pick, 0.5)
    assert "labels" not in parts
    targets = report_targets(data.reports)
    heads = label_heads(model, targets.shape[1])
    off, _ = batch_loss(model, data, pick, 0.5, 0.0, heads, targets)
    torch.testing.assert_close(off, plain)  # weight 0: the loss of before
    with_labels, parts = batch_loss(model, data, pick, 0.5, 1.0, heads, targets)
    assert parts["labels"] > 0 and with_labels > plain
    model.encoders.zero_grad()
    (with_labels - plain).backward()  # the label term alone
    grad = model.encoders.frontal.body[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.encoders.report.token_embedding.weight.grad is None or \
        model.encoders.report.token_embedding.weight.grad.abs().sum() == 0  # images learn the labels, not the text
    with pytest.raises(ConfigError, match="label_weight"):
        load_config(MultiviewTrainConfig, None, ["aligned.label_weight=-1"])


def test_fitting_with_labels_lowers_the_label_loss(setup, caplog: pytest.LogCaptureFixture) -> None:
    model, data = setup
    cfg = load_config(MultiviewTrainConfig, None, ["aligned.label_weight=1.0", "aligned.steps=120",
                                                   "aligned.batch_size=16", "aligned.lr=0.003", "progress=false"])
    history: list[dict[str, float]] = []
    with caplog.at_level(logging.INFO, logger="cxrgen.train.aligned"):
        fit_aligned(model, data, cfg, history)
    assert any("report-label loss" in r.message for r in caplog.records)
    first = sum(h["labels"] for h in history[:10]) / 10
    last = sum(h["labels"] for h in history[-10:]) / 10
    assert last < first / 2, (first, last)
    plain: list[dict[str, float]] = []
    fit_aligned(model, data, load_config(MultiviewTrainConfig, None, ["aligned.steps=2", "progress=false"]), plain)
    assert len(plain) == 2 and "labels" not in plain[0]
