"""A small text encoder trained from scratch with the denoiser, and the BPE tokenizer it reads.

``train_tokenizer`` learns a lower-cased byte-level BPE vocabulary (Sennrich et al. 2016; the
GPT-2 / RoBERTa byte alphabet, so no text is ever unknown) from report texts with the
``tokenizers`` library, wraps it BERT-style as [CLS] text [SEP], and saves Hugging Face tokenizer
files. Byte-level BPE rather than WordPiece because the tokenizers WordPiece trainer assigns
continuation ("##x") ids in hash order, so two trainings on the same texts can give different
vocabularies (huggingface/tokenizers#1794); byte-level BPE training is reproducible.
``ScratchTextEncoder`` is a pre-norm transformer encoder (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture") with learned positions and a final LayerNorm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text.base import TextEncoder

log = logging.getLogger(__name__)

#: Special tokens of the scratch tokenizer, in id order (so [PAD] is id 0).
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
#: Weights file of a saved scratch encoder.
SCRATCH_WEIGHTS_NAME = "model.safetensors"


def manifest_texts(manifests: Iterable[str | Path], columns: Iterable[str] = ("prompt", "report")) -> list[str]:
    """Every non-empty text of the named columns of the manifests (a report corpus for a tokenizer)."""
    from cxrgen.data.manifest import read_manifest

    texts: list[str] = []
    columns, manifests = tuple(columns), list(manifests)
    for path in manifests:
        table = read_manifest(path)
        if not any(c in table.columns for c in columns):
            raise ConfigError(f"{path} has none of the text columns {list(columns)}; name others with --column")
        for column in columns:
            if column in table.columns:
                texts += [t for t in table[column].dropna().astype(str) if t.strip()]
    if not texts:
        raise ConfigError(f"no text in the columns {list(columns)} of {[str(m) for m in manifests]}; "
                          "name the columns holding reports with --column")
    return texts


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Learn a lower-cased byte-level BPE vocabulary from ``texts``; save it to ``out_dir`` and return it.

    The same texts always give the same vocabulary. Laterality words (left/right) are ordinary
    words here: only case and accents are dropped.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size <= smallest:
        raise ConfigError(
            f"vocab_size={vocab_size}: give more than {smallest} (special tokens + the 256-byte alphabet)"
        )
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ConfigError("train_tokenizer got no non-empty texts; pass the report texts to learn from")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP, mask_token=MASK
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    log.info("trained a BPE tokenizer of %d tokens on %d texts -> %s", len(wrapped), len(texts), out_dir)
    return wrapped


class ScratchTransformer(nn.Module):
    """Token embedding + learned positions -> pre-norm transformer blocks -> LayerNorm."""

    def __init__(self, vocab_size: int, config: TextEncoderConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.width))
        layer = nn.TransformerEncoderLayer(
            d_model=config.width,
            nhead=config.heads,
            dim_feedforward=int(config.width * config.mlp_ratio),
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers=config.depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.width)

    def reset_parameters(self, std: float, generator: torch.Generator) -> None:
        """Normal(0, std) for embeddings and weight matrices, zero biases, unit norm gains."""
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                nn.init.normal_(param, mean=0.0, std=std, generator=generator)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            else:  # LayerNorm gains
                nn.init.ones_(param)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token features (B, L, D) of ids (B, L); ``mask`` (B, L) True = real token."""
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:length]  # (B, L, D)
        x = self.blocks(x, src_key_padding_mask=~mask)  # (B, L, D)
        return self.final_norm(x)


class ScratchTextEncoder(TextEncoder):
    """A small transformer encoder learned jointly with the denoiser, over a trained BPE tokenizer.

    ``config.name_or_path`` is a directory with tokenizer files (from ``train_tokenizer``) and,
    for a saved encoder, ``model.safetensors``; without weights the network starts from a
    seeded random init.
    """

    backend = "scratch"

    def __init__(
        self, config: TextEncoderConfig, tokenizer, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(config, tokenizer)
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; make one with cxrgen.text.train_tokenizer")
        self.network = ScratchTransformer(len(tokenizer), config)
        if generator is None:
            generator = torch.Generator().manual_seed(config.seed)
        self.network.reset_parameters(config.init_std, generator)
        self._apply_trainable()

    @classmethod
    def from_config(cls, config: TextEncoderConfig, generator: torch.Generator | None = None) -> TextEncoder:
        """Tokenizer (and saved weights, if any) from ``config.name_or_path``."""
        if not config.name_or_path:
            raise ConfigError(
                "text.backend='scratch' needs text.name_or_path: a directory made by "
                "cxrgen.text.train_tokenizer(texts, vocab_size, out_dir) (or a saved scratch encoder)"
            )
        directory = Path(config.name_or_path)
        if not directory.is_dir():
            raise ConfigError(
                f"text.name_or_path={str(directory)!r} is not a directory; train a tokenizer there first"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        encoder = cls(config, tokenizer, generator)
        weights = directory / SCRATCH_WEIGHTS_NAME
        if weights.is_file():
            try:
                encoder.network.load_state_dict(load_file(str(weights)), strict=True)
            except RuntimeError as exc:
                raise ConfigError(
                    f"the weights in {weights} do not fit text.width/depth/heads/max_length of this config "
                    f"({exc}); load a saved encoder with cxrgen.text.load_text_encoder(directory)"
                ) from exc
        elif not config.trainable:
            log.warning(
                "the scratch text encoder is frozen but has no trained weights in %s: its random "
                "features will never learn; set text.trainable=true to train it with the denoiser",
                directory,
            )
        return encoder

    @property
    def hidden_size(self) -> int:
        """Width D of the token features (``config.width``)."""
        return self.config.width

    def encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token features (B, L, D)."""
        return self.network(input_ids, mask)

    def _save_weights(self, directory: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.network.state_dict().items()}
        save_file(state, str(directory / SCRATCH_WEIGHTS_NAME))
