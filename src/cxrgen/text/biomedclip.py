"""BiomedCLIP's text tower (PubMedBERT) through open_clip; context = its token features before pooling.

open_clip is an optional extra (``pip install 'cxrgen[biomedclip]'``) and is imported only when
this back-end is built. Sources:

- ``hf-hub:<id>`` or ``local-dir:<dir>`` (or a directory holding ``open_clip_config.json``):
  ``open_clip.create_model_from_pretrained`` + ``open_clip.get_tokenizer``; only the text tower's
  transformers model (``model.text.transformer``) is kept, the image tower is dropped.
- a directory written by ``save_pretrained`` (config.json + model.safetensors + tokenizer files):
  that text tower is a plain transformers model, so it loads with ``AutoModel`` and needs no
  open_clip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text.base import TextEncoder
from cxrgen.text.hf import TransformersTextEncoder

log = logging.getLogger(__name__)

BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
HF_CONFIG_NAME = "config.json"
HF_HUB_PREFIX, LOCAL_DIR_PREFIX = "hf-hub:", "local-dir:"
BIOMEDCLIP_INSTALL_HINT = "pip install 'cxrgen[biomedclip]'  (installs open_clip_torch and torchvision)"


def import_open_clip():
    """The open_clip module, or a ConfigError saying how to install it."""
    try:
        import open_clip
    except ImportError as exc:
        raise ConfigError(
            f"text.backend='biomedclip' needs open_clip, which is not installed ({exc}). "
            f"Install it with: {BIOMEDCLIP_INSTALL_HINT}"
        ) from exc
    return open_clip


def open_clip_source(name_or_path: str) -> str | None:
    """The open_clip model name for a source, or None when it is a saved transformers text tower."""
    if name_or_path.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return name_or_path
    directory = Path(name_or_path)
    if (directory / OPEN_CLIP_CONFIG_NAME).is_file():
        return LOCAL_DIR_PREFIX + str(directory)
    if (directory / HF_CONFIG_NAME).is_file():
        return None
    raise ConfigError(
        f"text.name_or_path={name_or_path!r} is neither an open_clip source ('hf-hub:<id>', "
        f"'local-dir:<dir>', a directory with {OPEN_CLIP_CONFIG_NAME}) nor a saved text tower "
        f"(a directory with {HF_CONFIG_NAME}); the default is {BIOMEDCLIP_HUB_ID!r}"
    )


class BiomedCLIPTextEncoder(TransformersTextEncoder):
    """BiomedCLIP text tower: token features (B, L, 768) = the PubMedBERT last hidden state."""

    backend = "biomedclip"
    default_name_or_path = BIOMEDCLIP_HUB_ID

    @classmethod
    def from_config(cls, config: TextEncoderConfig, generator: torch.Generator | None = None) -> TextEncoder:
        """Load through open_clip (hub / open_clip folder) or transformers (a saved text tower)."""
        source = cls.source(config)
        oc_name = open_clip_source(source)
        if oc_name is None:
            return super().from_config(config, generator)
        open_clip = import_open_clip()
        try:
            model, _preprocess = open_clip.create_model_from_pretrained(oc_name, device="cpu")
            oc_tokenizer = open_clip.get_tokenizer(oc_name, context_length=config.max_length)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"open_clip could not load {oc_name!r}: {exc}. Give a hub id this machine can reach "
                f"or a local directory with {OPEN_CLIP_CONFIG_NAME}, weights and tokenizer files."
            ) from exc
        text_tower = getattr(model, "text", None)
        transformer = getattr(text_tower, "transformer", None)
        if transformer is None or not hasattr(transformer, "save_pretrained"):
            raise ConfigError(
                f"{oc_name!r} has no transformers text tower (model.text.transformer); "
                "the biomedclip back-end needs an open_clip model with an HF text encoder"
            )
        log.info("loaded %s; keeping its text tower only", oc_name)
        return cls(config, transformer, oc_tokenizer.tokenizer)
