"""Aligned encoders (CoDi XR stage 1): frontal image, lateral image and report into one space, plus a view check.

``AlignedEncoders`` (diffusers ``ModelMixin``; shapes with E = ``embed_dim``):

* ``embed_frontal(images (B, 1, S, S) in [-1, 1]) -> (B, E)``, ``embed_lateral(...) -> (B, E)``,
  ``embed_tokens(ids (B, L), mask (B, L)) -> (B, E)``: L2-normalised, trained with symmetric InfoNCE
  (``cxrgen.multiview.contrastive.info_nce``) on every pair of the three modalities;
* ``view_logits(images) -> (B,)``: > 0 means lateral; a separate small CNN trained on both views.

``AlignedModel`` adds the tokenizer: ``embed_reports(list[str]) -> (B, E)``, ``lateral_probability``,
``warn_if_wrong_view(images, expected)`` and ``save_pretrained`` / ``from_pretrained`` of one folder.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from cxrgen.config import TextEncoderConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.multiview.contrastive import nearest
from cxrgen.text.report_ae import load_with_tokenizer, save_with_tokenizer, tokenize_reports
from cxrgen.text.scratch import ScratchTransformer

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("frontal", "lateral")


class ImageTower(nn.Module):
    """Four stride-2 conv stages (width w, 2w, 4w, 8w) -> global average pool -> linear (B, out)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for stage in range(4):
            nxt = width * 2**stage
            layers += [nn.Conv2d(channels, nxt, 3, stride=2, padding=1), nn.GroupNorm(min(8, nxt), nxt), nn.SiLU(),
                       nn.Conv2d(nxt, nxt, 3, padding=1), nn.GroupNorm(min(8, nxt), nxt), nn.SiLU()]
            channels = nxt
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, out) of images (B, 1, S, S)."""
        return self.head(self.body(images).mean(dim=(2, 3)))  # (B, C, s, s) -> (B, C) -> (B, out)


class AlignedEncoders(ModelMixin, ConfigMixin):
    """Frontal, lateral and report encoders into one normalised space (E), a learned temperature, a view check."""

    @register_to_config
    def __init__(self, vocab_size: int, image_size: int = 64, embed_dim: int = 128, image_width: int = 32,
                 text_width: int = 128, text_depth: int = 2, heads: int = 4, max_length: int = 96,
                 temperature: float = 0.07) -> None:
        super().__init__()
        self.frontal = ImageTower(image_width, embed_dim)
        self.lateral = ImageTower(image_width, embed_dim)
        self.view = ImageTower(max(4, image_width // 4), 1)
        text_cfg = TextEncoderConfig(backend="scratch", max_length=max_length, width=text_width, depth=text_depth,
                                     heads=heads, mlp_ratio=2.0)
        self.report = ScratchTransformer(vocab_size, text_cfg)
        self.report_head = nn.Linear(text_width, embed_dim)
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))  # CLIP's logit scale

    @property
    def temperature(self) -> torch.Tensor:
        """tau of logits = z_a @ z_b.T / tau, clamped to >= 0.01 (CLIP caps the logit scale at 100)."""
        return torch.exp(-self.log_inv_temperature).clamp(min=0.01)

    def _check(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 1 or tuple(images.shape[2:]) != (size, size):
            raise DataError(f"images of shape {tuple(images.shape)}: the aligned encoders take (B, 1, {size}, "
                            f"{size}) grayscale in [-1, 1]; load them with cxrgen.data.images.load_image")

    def embed_frontal(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (B, E) of frontal images (B, 1, S, S)."""
        self._check(images)
        return F.normalize(self.frontal(images), dim=-1)

    def embed_lateral(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (B, E) of lateral images (B, 1, S, S)."""
        self._check(images)
        return F.normalize(self.lateral(images), dim=-1)

    def embed_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (B, E) of report tokens (B, L): masked mean of token features, projected."""
        tokens = self.report(input_ids, mask)  # (B, L, W)
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, W)
        return F.normalize(self.report_head(pooled), dim=-1)

    def view_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B,) that each image is a lateral view (> 0) rather than a frontal one."""
        self._check(images)
        return self.view(images).squeeze(-1)


class AlignedModel:
    """``AlignedEncoders`` with its tokenizer: report embeddings from text, the view check, one saved folder."""

    def __init__(self, encoders: AlignedEncoders, tokenizer: PreTrainedTokenizerBase) -> None:
        if len(tokenizer) != encoders.config.vocab_size:
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the report encoder "
                              f"{encoders.config.vocab_size}; save and load them together")
        self.encoders = encoders
        self.tokenizer = tokenizer

    def tokenize(self, reports: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask (B, L) of reports, as the report encoder reads them."""
        return tokenize_reports(self.tokenizer, reports, self.encoders.config.max_length, self.encoders.device)

    @torch.no_grad()
    def embed_reports(self, reports: list[str]) -> torch.Tensor:
        """Normalised report embeddings (B, E)."""
        return self.encoders.embed_tokens(*self.tokenize(reports))

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, view: str) -> torch.Tensor:
        """Normalised embeddings (B, E) of images (B, 1, S, S) of one view ("frontal" or "lateral")."""
        if view not in VIEWS:
            raise ConfigError(f"view={view!r}: use one of {list(VIEWS)}")
        embed = self.encoders.embed_frontal if view == "frontal" else self.encoders.embed_lateral
        return embed(images.to(self.encoders.device))

    @torch.no_grad()
    def retrieve_reports(self, images: torch.Tensor, view: str, reports: list[str], batch_size: int = 256
                         ) -> list[str]:
        """For each image (B, 1, S, S) the most similar of ``reports`` (the retrieval baseline of image -> report)."""
        gallery = torch.cat([self.embed_reports(reports[s:s + batch_size]) for s in range(0, len(reports), batch_size)])
        best = nearest(self.embed_images(images, view), gallery, k=1)[:, 0]  # (B,)
        return [reports[int(i)] for i in best]

    @torch.no_grad()
    def lateral_probability(self, images: torch.Tensor) -> torch.Tensor:
        """Probability (B,) that each image (B, 1, S, S) is a lateral view."""
        return torch.sigmoid(self.encoders.view_logits(images.to(self.encoders.device)))

    def warn_if_wrong_view(self, images: torch.Tensor, expected: str, threshold: float = 0.5) -> list[int]:
        """Indices of images the view check reads as the other view; logs a warning naming them."""
        if expected not in VIEWS:
            raise ConfigError(f"expected={expected!r}: use one of {list(VIEWS)}")
        p_lateral = self.lateral_probability(images)
        wrong = p_lateral > threshold if expected == "frontal" else p_lateral < 1.0 - threshold
        indices = [int(i) for i in torch.nonzero(wrong).flatten()]
        if indices:
            other = "lateral" if expected == "frontal" else "frontal"
            log.warning("image(s) %s given as %s look %s to the view check (p(lateral) = %s); check the inputs",
                        indices, expected, other, [round(float(p_lateral[i]), 2) for i in indices])
        return indices

    def save_pretrained(self, directory: str | Path) -> Path:
        """Encoders (config.json + safetensors) and tokenizer files into one folder."""
        return save_with_tokenizer(self.encoders, self.tokenizer, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AlignedModel:
        """Load a folder written by ``save_pretrained`` (eval mode)."""
        return cls(*load_with_tokenizer(AlignedEncoders, directory, "aligned encoders", "aligned"))
