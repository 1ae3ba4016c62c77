"""The text-encoder registry: back-end name -> factory, and building or loading an encoder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Protocol

import torch

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text.base import TEXT_ENCODER_CONFIG_NAME, TextEncoder
from cxrgen.text.biomedclip import BiomedCLIPTextEncoder
from cxrgen.text.hf import BertTextEncoder, CLIPTextEncoder
from cxrgen.text.minilm import MiniLMTextEncoder
from cxrgen.text.scratch import ScratchTextEncoder


class _Factory(Protocol):
    def __call__(
        self, config: TextEncoderConfig, generator: torch.Generator | None = None
    ) -> TextEncoder: ...


#: Back-end name -> factory (a plain dict: add a back-end by adding an entry).
TEXT_ENCODERS: dict[str, _Factory] = {
    "clip": CLIPTextEncoder.from_config,
    "bert": BertTextEncoder.from_config,
    "biomedclip": BiomedCLIPTextEncoder.from_config,
    "minilm": MiniLMTextEncoder.from_config,
    "scratch": ScratchTextEncoder.from_config,
}


def build_text_encoder(config: TextEncoderConfig, generator: torch.Generator | None = None) -> TextEncoder:
    """The text encoder named by ``config.backend``; ``generator`` seeds random init (scratch only)."""
    factory = TEXT_ENCODERS.get(config.backend)
    if factory is None:
        raise ConfigError(
            f"unknown text.backend={config.backend!r}; valid back-ends: {sorted(TEXT_ENCODERS)}"
        )
    return factory(config, generator)


def load_text_encoder(directory: str | Path, trainable: bool | None = None) -> TextEncoder:
    """Rebuild an encoder written by ``TextEncoder.save_pretrained`` (``trainable`` overrides the saved)."""
    directory = Path(directory)
    config_path = directory / TEXT_ENCODER_CONFIG_NAME
    if not config_path.is_file():
        raise ConfigError(
            f"{directory} holds no {TEXT_ENCODER_CONFIG_NAME}; give a directory written by "
            "TextEncoder.save_pretrained (or build a new encoder with build_text_encoder)"
        )
    record = json.loads(config_path.read_text(encoding="utf-8"))
    by_reference = bool(record.pop("by_reference", False))
    record.pop("_class_name", None)
    saved = TextEncoderConfig(**record)
    if by_reference:  # weights live at the saved source, not here
        return build_text_encoder(saved if trainable is None else dataclasses.replace(saved, trainable=trainable))
    config = dataclasses.replace(
        saved,
        name_or_path=str(directory),
        subfolder=None,
        tokenizer_subfolder=None,
        trainable=saved.trainable if trainable is None else trainable,
    )
    return build_text_encoder(config)
