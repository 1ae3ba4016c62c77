"""Text encoders: prompts -> (context (B, L, D), mask (B, L)) for the denoiser, one interface, five back-ends.

>>> encoder = build_text_encoder(TextEncoderConfig(backend="minilm"))
>>> context, mask = encoder.encode(["large left pleural effusion"])
>>> null_context, null_mask = encoder.encode_null(batch_size=1)   # classifier-free guidance
>>> encoder.save_pretrained("model/text_encoder"); TextEncoder.from_pretrained("model/text_encoder")
"""

from __future__ import annotations

from cxrgen.config import TextEncoderConfig
from cxrgen.text.base import TEXT_ENCODER_CONFIG_NAME, TextEncoder, saved_by_reference
from cxrgen.text.biomedclip import BiomedCLIPTextEncoder
from cxrgen.text.hf import BertTextEncoder, CLIPTextEncoder, TransformersTextEncoder
from cxrgen.text.minilm import MiniLMTextEncoder
from cxrgen.text.registry import TEXT_ENCODERS, build_text_encoder, load_text_encoder
from cxrgen.text.scratch import ScratchTextEncoder, manifest_texts, train_tokenizer

__all__ = [
    "TEXT_ENCODERS",
    "TEXT_ENCODER_CONFIG_NAME",
    "BertTextEncoder",
    "BiomedCLIPTextEncoder",
    "CLIPTextEncoder",
    "MiniLMTextEncoder",
    "ScratchTextEncoder",
    "TextEncoder",
    "TextEncoderConfig",
    "TransformersTextEncoder",
    "build_text_encoder",
    "load_text_encoder",
    "saved_by_reference",
    "train_tokenizer",
    "manifest_texts",
]
