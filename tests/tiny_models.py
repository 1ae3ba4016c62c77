"""Tiny random text models saved with save_pretrained, for tests that load them back by path."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cxrgen.config import ModelConfig, SamplingConfig, ScheduleConfig, apply_overrides, from_dict
from cxrgen.parts import build_parts
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import training_scheduler

WIDTH = 16
WORDS = [
    "left", "right", "pleural", "effusion", "no", "acute", "disease", "lower", "lobe", "opacity", "finding",
]  # fmt: skip


def make_clip(directory: Path) -> Path:
    """A 2-layer CLIP text model (width 16) with a byte-level, merge-free BPE vocab."""
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)  # test-side seeding of a random tiny model, not library code
    CLIPTextModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_bert(directory: Path) -> Path:
    """A 2-layer BERT (width 16) with a word-level WordPiece vocab."""
    directory.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *("##" + c for c in letters)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --- a tiny random CXRPipeline -------------------------------------------------------------------
STEPS = 3
PROMPTS = ["small left pleural effusion", "no acute disease"]


def tiny_model_config(bert_dir: Path) -> ModelConfig:
    """32 px images, 4x8x8 latents, a 2-layer BERT (width 16) and a 3-block U-ViT."""
    return from_dict(ModelConfig, {
        "image_size": 32,
        "text_encoder": {"backend": "bert", "name_or_path": str(bert_dir), "max_length": 16},
        "autoencoder": {"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1},
        "denoiser": {"name": "uvit-tiny", "in_channels": 4, "sample_size": 8, "context_dim": WIDTH,
                     "context_len": 16},
    })  # fmt: skip


def tiny_pipeline(root: Path, sampling: SamplingConfig | None = None, overrides: list[str] | None = None) -> CXRPipeline:
    """A random tiny pipeline (test-side seeding of the random init); ``overrides`` change its ModelConfig."""
    torch.manual_seed(0)
    cfg = apply_overrides(tiny_model_config(make_bert(root / "bert")), overrides or [])
    parts = build_parts(cfg)
    predicts = cfg.denoiser.prediction_type
    scheduler = training_scheduler(ScheduleConfig(), predicts, "flow" if predicts == "flow_prediction" else "ddpm")
    sampling = sampling or SamplingConfig(sampler="ddim", steps=STEPS, guidance_scale=3.0)
    return CXRPipeline(parts.text_encoder, parts.autoencoder, parts.denoiser, scheduler, cfg.image_size,
                       sampling).eval()
