"""The report autoencoder's training and decoding options: repetition guard, encoder word dropout, label
smoothing, length-grouped batches, the lr schedule and the stage config's new fields."""

from __future__ import annotations

import pytest
import torch

from cxrgen.config import load_config
from cxrgen.config.multiview import MultiviewTrainConfig, ReportAEStageConfig
from cxrgen.errors import ConfigError
from cxrgen.text.report_ae import NgramGuard, ReportCodec
from cxrgen.text.scratch import train_tokenizer
from cxrgen.train.report_ae import length_grouped_batches, lr_at, run_report_ae, word_dropout_at

REPORTS = ["FINDINGS: Left pleural effusion. Heart size is normal.\nIMPRESSION: Left pleural effusion.",
           "FINDINGS: Right pneumothorax. The heart is enlarged.\nIMPRESSION: Right pneumothorax.",
           "FINDINGS: No pleural effusion. Heart size is normal.\nIMPRESSION: Normal chest."]


@pytest.fixture(scope="module")
def codec(tmp_path_factory) -> ReportCodec:
    tok = train_tokenizer(REPORTS * 4, 300, tmp_path_factory.mktemp("tok"))
    return ReportCodec.build(tok, torch.Generator().manual_seed(0), max_length=40, width=16, encoder_depth=1,
                             decoder_depth=1, heads=2, latent_tokens=3, latent_dim=4)


def _ngrams(row: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]


def test_ngram_guard_bans_a_repeat_within_a_section_only():
    guard = NgramGuard(2, section_token_id=9)
    assert guard.banned([5, 6, 7, 5]) == [6]  # "5 6" seen: 6 after 5 is banned
    assert guard.banned([5, 6, 7, 8]) == []
    assert guard.banned([5, 6, 9, 5]) == []  # a new section forgets the findings' n-grams
    assert sorted(guard.banned([5, 6, 5, 7, 5])) == [6, 7]
    logits = torch.zeros(2, 10)
    out = guard.apply(torch.tensor([[5, 6, 7, 5], [5, 6, 9, 5]]), logits)
    assert out[0, 6] == float("-inf") and torch.isfinite(out[1]).all() and torch.isfinite(logits).all()
    assert torch.equal(NgramGuard(0).apply(torch.tensor([[5, 6, 5]]), logits[:1]), logits[:1])


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_with_the_guard_repeats_no_ngram_and_the_default_is_unchanged(codec, beams):
    z = torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(3)) * 3
    raw = z / codec.latent_scale
    free = codec.model.generate(raw, beams=beams, max_length=30)
    assert torch.equal(free, codec.model.generate(raw, beams=beams, max_length=30, no_repeat_ngram=0))
    guarded = codec.model.generate(raw, beams=beams, max_length=30, no_repeat_ngram=3)
    pad = codec.tokenizer.pad_token_id
    for row in guarded.tolist():
        row = [t for t in row if t != pad]
        grams = _ngrams(row, 3)
        assert len(grams) == len(set(grams)), row
    rows = [[t for t in r if t != pad] for r in free.tolist()]
    repeats = [r for r in rows if len(set(_ngrams(r, 3))) < len(_ngrams(r, 3))]
    assert repeats, "an untrained decoder repeats itself: the test needs a repeat for the guard to remove"
    assert not torch.equal(free, guarded)
    codec.model.register_to_config(no_repeat_ngram=3)  # the saved default is used when decode is not told
    try:
        assert codec.decode(z, beams=beams, max_length=30) == codec.decode(z, beams=beams, max_length=30,
                                                                           no_repeat_ngram=3)
    finally:
        codec.model.register_to_config(no_repeat_ngram=0)


def test_reranking_picks_the_beam_whose_latent_is_nearest_and_never_an_empty_one(codec):
    target = codec.encode([REPORTS[1]])
    assert codec._nearest(list(REPORTS), target, 3) == [REPORTS[1]]
    assert codec._nearest(["", REPORTS[2]], codec.encode(["."]), 2) == [REPORTS[2]]
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
    beams = codec.model.generate(z / codec.latent_scale, beams=3, max_length=20, all_beams=True)
    assert beams.shape[:2] == (2, 3)
    assert torch.equal(beams[:, 0], codec.model.generate(z / codec.latent_scale, beams=3, max_length=20))
    candidates = [codec.tokenizer.batch_decode(b, skip_special_tokens=True) for b in beams]
    picked = codec.decode(z, beams=3, max_length=20, rerank=True)
    assert all(p in [c.strip() for c in cands] for p, cands in zip(picked, candidates, strict=True))
    assert codec.decode(z, beams=3, max_length=20) == codec.decode(z, beams=3, max_length=20, rerank=False)


def test_encoder_word_dropout_and_label_smoothing_change_the_loss_and_keep_cls(codec):
    ids, mask = codec.tokenize(REPORTS)
    masked = codec.model.mask_tokens(ids, mask, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(masked[:, 0], ids[:, 0]) and torch.equal(masked[~mask], ids[~mask])
    assert (masked == codec.model.config.mask_token_id).any()
    assert torch.equal(codec.model.mask_tokens(ids, mask, 0.0, None), ids)

    def losses(**kw):
        return codec.model(ids, mask, generator=torch.Generator().manual_seed(1), **kw)

    plain = losses()
    assert torch.equal(plain["ce"], losses(encoder_word_dropout=0.0, label_smoothing=0.0)["ce"])
    assert not torch.equal(plain["ce"], losses(encoder_word_dropout=0.5)["ce"])
    assert losses(label_smoothing=0.2)["ce"] != plain["ce"]


def test_length_grouped_batches_draw_every_report_and_pad_less():
    lengths = torch.randint(5, 80, (500,), generator=torch.Generator().manual_seed(0))

    def padding(group: int) -> tuple[float, set[int]]:
        batches = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(1), group)
        picks = [next(batches) for _ in range(200)]
        pad = sum(float(lengths[p].max() * 16 - lengths[p].sum()) for p in picks)
        return pad, set(torch.cat(picks).tolist())

    (plain, seen_plain), (grouped, seen_grouped) = padding(0), padding(8)
    assert grouped < 0.5 * plain
    assert len(seen_grouped) > 0.95 * len(lengths) and len(seen_plain) > 0.95 * len(lengths)


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, warmup=10, floor=0.0) < 0.01
    assert lr_at(99, 100, 1.0, warmup=0, floor=0.25) == pytest.approx(0.25, abs=0.01)


def test_new_stage_fields_default_off_validate_and_reach_the_saved_model(codec, tmp_path):
    stage = ReportAEStageConfig()
    assert (stage.encoder_word_dropout, stage.label_smoothing, stage.no_repeat_ngram, stage.length_groups) == (0, 0, 0, 0)
    for bad in ("encoder_word_dropout=1.0", "label_smoothing=-0.1", "no_repeat_ngram=-1", "min_lr_ratio=2"):
        with pytest.raises(ConfigError, match="report_ae"):
            load_config(MultiviewTrainConfig, None, [f"report_ae.{bad}"])
    codec.save_pretrained(tmp_path / "start")
    stage = ReportAEStageConfig(init_from=str(tmp_path / "start"), steps=4, batch_size=2, eval_reports=2,
                                encoder_word_dropout=0.1, label_smoothing=0.1, length_groups=2, no_repeat_ngram=4,
                                warmup_steps=2, eval_splits=("test", "validate"), rerank=True, beams=2)
    corpora = {"toy": {"train": REPORTS, "validate": REPORTS[1:], "test": REPORTS[:2]}}
    metrics = run_report_ae(MultiviewTrainConfig(report_ae=stage, progress=False), corpora, tmp_path / "out")
    assert set(metrics["eval"]) == {"toy", "toy/validate"} and metrics["eval"]["toy/validate"]["n"] == 2
    assert ReportCodec.from_pretrained(metrics["model"]).config.no_repeat_ngram == 4
    assert ReportCodec.from_pretrained(metrics["model"]).config.rerank
    assert ReportCodec.from_pretrained(tmp_path / "start").config.no_repeat_ngram == 0


def test_word_dropout_schedule_holds_then_falls_to_its_final_value():
    assert [word_dropout_at(s, 30, 0.3, None) for s in (0, 29)] == [0.3, 0.3]
    held = [word_dropout_at(s, 30, 0.3, 0.0) for s in range(30)]
    assert held[:20] == [0.3] * 20 and held[-1] == 0.0
    assert all(a >= b for a, b in zip(held, held[1:], strict=False))


def test_qformer_pooling_is_an_option_whose_default_keeps_the_old_network(codec, tmp_path):
    assert any(k.startswith("pool.") for k in codec.model.state_dict())
    assert not any(k.startswith("pool_layers.") for k in codec.model.state_dict())
    deep = ReportCodec.build(codec.tokenizer, torch.Generator().manual_seed(0), max_length=40, width=16,
                             encoder_depth=1, decoder_depth=1, heads=2, latent_tokens=3, latent_dim=4, pool_depth=2)
    assert any(k.startswith("pool_layers.") for k in deep.model.state_dict())
    latent = deep.encode(REPORTS)
    assert latent.shape == (3, 3, 4) and not torch.allclose(latent[0], latent[1])  # the latent reads the report
    ids, mask = deep.tokenize(REPORTS)
    ids2 = ids.clone()
    ids2[0, 1:][mask[0, 1:]] = deep.tokenizer.mask_token_id
    assert not torch.allclose(deep.model.posterior(ids, mask)[0][0], deep.model.posterior(ids2, mask)[0][0])
    deep.save_pretrained(tmp_path / "deep")
    assert torch.allclose(ReportCodec.from_pretrained(tmp_path / "deep").encode(REPORTS), latent)
    for bad in ("pool_depth=-1", "word_dropout_final=1.0"):
        with pytest.raises(ConfigError, match="report_ae"):
            load_config(MultiviewTrainConfig, None, [f"report_ae.{bad}"])
    stage = ReportAEStageConfig()
    assert (stage.pool_depth, stage.word_dropout_final, stage.eval_truth) == (0, None, False)
