"""Text encoders from Hugging Face transformers: CLIP (Stable Diffusion / RoentGen) and the BERT family.

Both use the last hidden state as context tokens. Weights come by hub id or local directory
through ``from_pretrained``; ``save_pretrained`` writes the transformers layout (config.json +
model.safetensors + tokenizer files), which loads back through the same call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, PreTrainedModel

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text.base import TextEncoder

log = logging.getLogger(__name__)


class TransformersTextEncoder(TextEncoder):
    """A transformers model + tokenizer; context = last hidden state (B, L, D)."""

    #: Hub id used when ``config.name_or_path`` is None.
    default_name_or_path: ClassVar[str | None] = None
    #: Whether the model gets the attention mask (CLIP's causal mask makes it moot, and SD omits it).
    pass_attention_mask: ClassVar[bool] = True
    unused_submodules = ("pooler",)

    def __init__(self, config: TextEncoderConfig, model: PreTrainedModel, tokenizer) -> None:
        super().__init__(config, tokenizer)
        self.model = model
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and config.max_length > positions:
            raise ConfigError(
                f"text.max_length={config.max_length} exceeds the {positions} positions of "
                f"{config.name_or_path or self.default_name_or_path}; set text.max_length <= {positions}"
            )
        self._apply_trainable()

    @classmethod
    def load_model(cls, source: str, config: TextEncoderConfig) -> PreTrainedModel:
        """The transformers model behind this back-end (hub id or local dir)."""
        return AutoModel.from_pretrained(
            source, subfolder=config.subfolder or "", trust_remote_code=config.trust_remote_code
        )

    @classmethod
    def source(cls, config: TextEncoderConfig) -> str:
        """Hub id or local directory to load from."""
        source = config.name_or_path or cls.default_name_or_path
        if source is None:
            raise ConfigError(f"text.backend={cls.backend!r} needs text.name_or_path (hub id or local dir)")
        return str(source)

    @classmethod
    def from_config(cls, config: TextEncoderConfig, generator: torch.Generator | None = None) -> TextEncoder:
        """Load model and tokenizer named by the config (``generator`` unused: weights are pretrained)."""
        del generator
        source = cls.source(config)
        tokenizer_subfolder = config.tokenizer_subfolder or config.subfolder or ""
        try:
            model = cls.load_model(source, config)
            tokenizer = AutoTokenizer.from_pretrained(
                source, subfolder=tokenizer_subfolder, trust_remote_code=config.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the {cls.backend!r} text encoder from {source!r} "
                f"(subfolder={config.subfolder!r}, tokenizer_subfolder={tokenizer_subfolder!r}): {exc}. "
                "Give a local directory with config.json, weights and tokenizer files, "
                "or a hub id this machine can reach."
            ) from exc
        return cls(config, model, tokenizer)

    @property
    def hidden_size(self) -> int:
        """Width D of the last hidden state."""
        return int(self.model.config.hidden_size)

    def encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state (B, L, D)."""
        attention_mask = mask.long() if self.pass_attention_mask else None
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _save_weights(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory), safe_serialization=True)


class CLIPTextEncoder(TransformersTextEncoder):
    """CLIP text tower as in Stable Diffusion / RoentGen: tokens = final-layer-normed last hidden state.

    The attention mask is not passed (as in SD): CLIP's causal mask already keeps real tokens from
    seeing the padding after them, and SD-trained denoisers expect the padding tokens' features.
    """

    backend = "clip"
    default_name_or_path = "openai/clip-vit-large-patch14"
    pass_attention_mask = False

    @classmethod
    def load_model(cls, source: str, config: TextEncoderConfig) -> PreTrainedModel:
        """``CLIPTextModel`` (also reads the text half of a full CLIPModel checkpoint)."""
        return CLIPTextModel.from_pretrained(source, subfolder=config.subfolder or "")


class BertTextEncoder(TransformersTextEncoder):
    """BERT-family encoder (RadBERT, SapBERT, CXR-BERT, PubMedBERT): tokens = last hidden state."""

    backend = "bert"
    default_name_or_path = "StanfordAIMI/RadBERT"
