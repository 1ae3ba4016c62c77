"""The from-scratch text encoder and its BPE tokenizer (trained here on sentences and on IU reports)."""

from __future__ import annotations

import dataclasses
import logging
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text import ScratchTextEncoder, build_text_encoder, load_text_encoder, train_tokenizer

SENTENCES = [
    f"{size} {side} pleural effusion{tail}"
    for size in ("small", "moderate", "large", "no")
    for side in ("left", "right", "bilateral")
    for tail in ("", " with adjacent atelectasis", ". Heart size is normal.")
] + [
    "No acute cardiopulmonary abnormality.",
    "The lungs are clear. No pneumothorax.",
    "Heart size is normal. No focal consolidation.",
    "Right lower lobe pneumonia.",
    "Left upper lobe opacity, likely atelectasis.",
]
VOCAB_SIZE = 400  # 5 special tokens + 256 bytes + merges
MAX_LENGTH = 16
TINY = dict(width=32, depth=2, heads=4, max_length=MAX_LENGTH)
PROMPTS = ["large left pleural effusion", "no pneumothorax", ""]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("scratch_tok")
    train_tokenizer(SENTENCES, VOCAB_SIZE, directory)
    return directory


def _config(tokenizer_dir: Path, **kw) -> TextEncoderConfig:
    return TextEncoderConfig(backend="scratch", name_or_path=str(tokenizer_dir), **{**TINY, **kw})


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------
def test_train_tokenizer_saves_a_loadable_vocab(tokenizer_dir):
    loaded = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert (tokenizer_dir / "tokenizer.json").is_file() and len(loaded) <= VOCAB_SIZE
    ids = loaded("Large LEFT pleural effusion")["input_ids"]
    assert ids == loaded("large left pleural effusion")["input_ids"]  # lower-cased
    assert ids[0] == loaded.cls_token_id and ids[-1] == loaded.sep_token_id and loaded.pad_token_id == 0
    words = [loaded.convert_tokens_to_string([t]).strip() for t in loaded.convert_ids_to_tokens(ids[1:-1])]
    assert words == ["large", "left", "pleural", "effusion"]  # frequent words are whole tokens
    assert loaded.decode(ids, skip_special_tokens=True).strip() == "large left pleural effusion"


def test_train_tokenizer_is_reproducible(tmp_path):
    first = train_tokenizer(SENTENCES, VOCAB_SIZE, tmp_path / "a")
    second = train_tokenizer(list(SENTENCES), VOCAB_SIZE, tmp_path / "b")
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_train_tokenizer_refuses_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="alphabet"):
        train_tokenizer(SENTENCES, 100, tmp_path)
    with pytest.raises(ConfigError, match="no non-empty texts"):
        train_tokenizer(["", "  "], VOCAB_SIZE, tmp_path)


def _iu_texts(archive: Path, limit: int) -> list[str]:
    """FINDINGS and IMPRESSION texts of the first ``limit`` IU reports (test-side reader)."""
    texts = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.name.endswith(".xml") or len(texts) >= limit:
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            for node in root.iter("AbstractText"):
                if node.get("Label") in ("FINDINGS", "IMPRESSION") and node.text:
                    texts.append(node.text)
    return texts


@pytest.mark.shared_data
def test_tokenizer_and_encoder_on_iu_reports(iu_archive, tmp_path):
    texts = _iu_texts(iu_archive, limit=600)
    assert len(texts) >= 300
    tokenizer = train_tokenizer(texts, vocab_size=1000, out_dir=tmp_path / "iu_tok")
    for word in ("effusion", "pneumothorax", "cardiomediastinal", "left", "right"):
        assert len(tokenizer.tokenize(word)) == 1, (word, tokenizer.tokenize(word))
    encoder = build_text_encoder(_config(tmp_path / "iu_tok", max_length=64, trainable=True))
    context, mask = encoder.encode(texts[:8])
    assert context.shape == (8, 64, TINY["width"]) and torch.isfinite(context).all() and mask[:, 0].all()


# ------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------
def test_scratch_shapes_mask_and_padding_independence(tokenizer_dir):
    encoder = build_text_encoder(_config(tokenizer_dir))
    assert isinstance(encoder, ScratchTextEncoder) and encoder.hidden_size == TINY["width"]
    context, mask = encoder.encode(PROMPTS)
    assert context.shape == (3, MAX_LENGTH, TINY["width"]) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [len(ids) for ids in encoder.tokenizer(PROMPTS)["input_ids"]]
    shorter = build_text_encoder(_config(tokenizer_dir, pad_to_max_length=False))
    ctx_short, mask_short = shorter.encode(PROMPTS)
    assert ctx_short.shape[1] < MAX_LENGTH
    assert torch.allclose(context[mask], ctx_short[mask_short], atol=1e-5)  # padding is masked out
    ctx_all, mask_all = encoder.encode_all(PROMPTS, batch_size=1)  # one prompt per batch: no padding at all
    assert torch.equal(mask_all, mask) and torch.allclose(ctx_all[mask], context[mask], atol=1e-5)


def test_scratch_truncation_is_logged(tokenizer_dir, caplog):
    encoder = build_text_encoder(_config(tokenizer_dir, trainable=True))
    with caplog.at_level(logging.WARNING, logger="cxrgen.text"):
        context, mask = encoder.encode([" ".join(SENTENCES[:3]), "no pneumothorax"])
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(messages) == 1 and "1 of 2" in messages[0] and mask[0].all()


def test_scratch_init_is_seeded_by_config_or_generator(tokenizer_dir):
    a = build_text_encoder(_config(tokenizer_dir, seed=1, trainable=True))
    b = build_text_encoder(_config(tokenizer_dir, seed=1, trainable=True))
    c = build_text_encoder(_config(tokenizer_dir, seed=2, trainable=True))
    d = build_text_encoder(_config(tokenizer_dir, trainable=True), generator=torch.Generator().manual_seed(2))
    for (name, pa), pb, pc, pd in zip(
        a.named_parameters(), b.parameters(), c.parameters(), d.parameters(), strict=True
    ):
        assert torch.equal(pa, pb) and torch.equal(pc, pd), name
    assert not torch.equal(a.network.token_embedding.weight, c.network.token_embedding.weight)


def test_scratch_frozen_vs_trainable(tokenizer_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="cxrgen.text"):
        frozen = build_text_encoder(_config(tokenizer_dir))
    assert any("never learn" in r.getMessage() for r in caplog.records)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert not frozen.encode(PROMPTS)[0].requires_grad
    trainable = build_text_encoder(_config(tokenizer_dir, trainable=True, dropout=0.1))
    assert trainable.training
    context, mask = trainable.encode(PROMPTS)
    context[mask].pow(2).mean().backward()
    missing = [n for n, p in trainable.named_parameters() if p.grad is None]
    assert not missing, missing


def test_scratch_save_load_identical(tokenizer_dir, tmp_path):
    encoder = build_text_encoder(_config(tokenizer_dir, trainable=True))
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.5)
    encoder.encode(PROMPTS)[0].pow(2).mean().backward()
    optimizer.step()
    encoder.save_pretrained(tmp_path / "te")
    assert (tmp_path / "te" / "model.safetensors").is_file()
    loaded = load_text_encoder(tmp_path / "te")  # keeps the saved trainable=True
    assert loaded.trainable
    encoder.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(encoder.encode(PROMPTS)[0], loaded.encode(PROMPTS)[0])
        fresh = build_text_encoder(_config(tokenizer_dir, trainable=True)).eval()
        assert not torch.allclose(fresh.encode(PROMPTS)[0], loaded.encode(PROMPTS)[0])


def test_scratch_null_prompt(tokenizer_dir):
    encoder = build_text_encoder(_config(tokenizer_dir, null_prompt="no finding"))
    null, mask = encoder.encode_null(2)
    expected, expected_mask = encoder.encode(["no finding", "no finding"])
    assert torch.equal(null, expected) and torch.equal(mask, expected_mask)


def test_scratch_learns_laterality_jointly(tokenizer_dir):
    """Only the encoder learns (the head is a frozen random projection): 'left' vs 'right' separate."""
    encoder = build_text_encoder(_config(tokenizer_dir, trainable=True))
    head = torch.nn.Linear(TINY["width"], 2).requires_grad_(False)
    torch.nn.init.normal_(head.weight, std=TINY["width"] ** -0.5, generator=torch.Generator().manual_seed(0))
    prompts = [s for s in SENTENCES if " left " in f" {s} " or " right " in f" {s} "]
    labels = torch.tensor([0 if " left " in f" {s} " else 1 for s in prompts])
    ids, mask = encoder.tokenize(prompts)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        context = encoder.encode_tokens(ids, mask)  # (B, L, D)
        pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses


def test_scratch_needs_a_tokenizer_dir(tmp_path):
    with pytest.raises(ConfigError, match="train_tokenizer"):
        build_text_encoder(TextEncoderConfig(backend="scratch"))
    with pytest.raises(ConfigError, match="not a directory"):
        build_text_encoder(TextEncoderConfig(backend="scratch", name_or_path=str(tmp_path / "none")))


def test_scratch_config_round_trip_keeps_architecture(tokenizer_dir, tmp_path):
    config = _config(tokenizer_dir, width=16, heads=2, depth=1, trainable=True)
    encoder = build_text_encoder(config)
    encoder.save_pretrained(tmp_path / "te")
    loaded = load_text_encoder(tmp_path / "te", trainable=False)
    expected = dataclasses.replace(config, name_or_path=str(tmp_path / "te"), trainable=False)
    assert loaded.config == expected and loaded.hidden_size == 16 and len(loaded.network.blocks.layers) == 1
    with pytest.raises(ConfigError, match="do not fit"):
        build_text_encoder(dataclasses.replace(config, name_or_path=str(tmp_path / "te"), width=32, heads=4))


def test_scratch_encoder_cannot_be_saved_by_reference(tokenizer_dir, tmp_path):
    encoder = build_text_encoder(_config(tokenizer_dir))
    with pytest.raises(ConfigError, match="weights=True"):
        encoder.save_pretrained(tmp_path / "ref", weights=False)


def test_tokenizer_command_learns_from_manifest_text(tmp_path):
    import pandas as pd

    from cxrgen.cli import main
    from cxrgen.text import manifest_texts

    reports = [f"Small {side} pleural effusion. Heart size is normal. Case {i}." for i in range(40)
               for side in ("left", "right")]
    pd.DataFrame({"prompt": reports, "report": reports[::-1], "image_path": ""}).to_csv(tmp_path / "m.csv", index=False)
    assert len(manifest_texts([tmp_path / "m.csv"])) == 2 * len(reports)
    assert main(["tokenizer", str(tmp_path / "m.csv"), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]) == 0
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    left, right = (tok(f"small {s} pleural effusion")["input_ids"] for s in ("left", "right"))
    assert left != right and len(left) == len(right)
    with pytest.raises(ConfigError, match="--column"):
        manifest_texts([tmp_path / "m.csv"], ["impression"])  # a column with no text
