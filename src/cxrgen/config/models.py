"""Configs of the model parts: text encoder, latent autoencoder, denoiser, and the whole model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cxrgen.config.base import FrozenDict
from cxrgen.errors import ConfigError

log = logging.getLogger(__name__)

#: diffusers' names for the target; flow_prediction: the rectified-flow velocity eps - x0 (objective.kind=flow)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
AUTOENCODER_KINDS = ("kl", "identity")  # AutoencoderKL latents, or pixels (cxrgen.autoencoder.IdentityCodec)


#: Flat denoiser fields of the earlier config layout -> the constructor keyword argument each became.
LEGACY_DENOISER_FIELDS = {
    "hidden_size": "hidden_size", "depth": "depth", "num_heads": "num_heads", "patch_size": "patch_size",
    "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "time_embed": "time_embed_type",
    "project_context": "project_context", "final_conv": "final_conv", "pos_embed": "pos_embed_type",
    "block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block",
    "attention_head_dim": "attention_head_dim", "norm_num_groups": "norm_num_groups",
}  # fmt: skip


@dataclass(frozen=True)
class DenoiserConfig:
    """A denoiser: a registry name (cxrgen.denoisers.DENOISERS), the fields every denoiser shares, and
    ``kwargs`` overriding the preset's constructor keyword arguments (checked against the class there).

    The model itself is saved with its constructor's keyword arguments (its diffusers config.json).
    """

    name: str = "uvit-tiny"  # registry key, e.g. uvit-s, uvit-m, sd15-unet, unet-tiny
    prediction_type: str = "epsilon"  # recorded for the scheduler and loss: epsilon | v_prediction | sample
    in_channels: int = 4  # latent channels C
    sample_size: int = 32  # latent side h = w (256 px / autoencoder factor 8)
    context_dim: int = 768  # text token width D_text
    context_len: int = 77  # most text tokens (U-ViT position embeddings)
    pretrained: str | None = None  # start from: U-Net: SD weights (hub id / dir, subfolder "unet"); U-ViT: saved folder or CXRPipeline folder
    # constructor keyword arguments over the preset's, e.g. U-ViT {hidden_size: 256, patch_size: 4,
    # pos_embed_type: sincos}, U-Net {block_out_channels: [32, 64, 128]}
    kwargs: Mapping[str, Any] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        if not isinstance(self.kwargs, FrozenDict):  # e.g. DenoiserConfig(kwargs={...}) from Python
            object.__setattr__(self, "kwargs", FrozenDict(self.kwargs))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"denoiser.prediction_type={self.prediction_type!r}: use one of {list(PREDICTION_TYPES)}"
            )
        for key in ("in_channels", "sample_size", "context_dim", "context_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"denoiser.{key}={getattr(self, key)}: give a positive number")

    @staticmethod
    def upgrade_dict(data: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Read an earlier flat section (``hidden_size: 256`` beside ``name``) as ``kwargs`` (None: the preset's)."""
        legacy = [k for k in data if k in LEGACY_DENOISER_FIELDS]
        if not legacy:
            return data
        data, kwargs = dict(data), dict(data.get("kwargs") or {})
        for key in legacy:
            value = data.pop(key)
            if value is not None and not (key == "pos_embed" and value == "learned"):  # learned: the default
                kwargs.setdefault(LEGACY_DENOISER_FIELDS[key], value)
        data["kwargs"] = kwargs
        log.info("%s: read the earlier flat fields %s as %skwargs=%s; write them under kwargs to silence this",
                 where.rstrip(".") or "denoiser", legacy, where, kwargs)
        return data


@dataclass(frozen=True)
class AutoencoderConfig:
    """The latent codec: a pretrained AutoencoderKL (hub id / local dir) or the project's own 1-channel one.

    Latents are z = (posterior mean or sample - shift) * scale (LDM, Rombach et al. 2022, sec. 4.3.2);
    scale and shift are measured on data with ``cxrgen.autoencoder.measure_scale``.
    """

    kind: str = "kl"  # kl: an AutoencoderKL | identity: no codec, the denoiser works on pixels (f = 1)
    pretrained: str | None = None  # hub id or local dir to start from; None: build a fresh one
    subfolder: str | None = None  # e.g. "vae" inside a Stable Diffusion repository
    vae_channels: int = 1  # image channels of the AutoencoderKL: 1 (own CXR codec) or 3 (RGB, e.g. SD)
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # downsampling f = 2 ** (len - 1)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    scale: float | None = None  # None: the AutoencoderKL config's scaling_factor (1 for a fresh one)
    shift: float | None = None  # None: the AutoencoderKL config's shift_factor (0 when it has none)

    def __post_init__(self) -> None:
        if self.kind not in AUTOENCODER_KINDS:
            raise ConfigError(f"autoencoder.kind={self.kind!r}: use one of {list(AUTOENCODER_KINDS)}")
        if self.vae_channels not in (1, 3):
            raise ConfigError(f"autoencoder.vae_channels={self.vae_channels}: use 1 (grayscale) or 3 (RGB)")
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ConfigError(f"autoencoder.block_out_channels={self.block_out_channels}: give positive widths")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"autoencoder.block_out_channels={self.block_out_channels} must all be divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"autoencoder.scale={self.scale}: give a positive factor (1 / latent std)")

    @property
    def downsample_factor(self) -> int:
        """Spatial factor f between image and latent: 1 in pixel space, else one 2x per level but the last."""
        return 1 if self.kind == "identity" else 2 ** (len(self.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        """Channels C of what the denoiser sees: the image channels in pixel space, else latent_channels."""
        return 1 if self.kind == "identity" else self.latent_channels


#: TextEncoderConfig.pooling values: one context vector per token, per sentence, or both (sentences first).
TEXT_POOLINGS = ("tokens", "sentences", "both")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder turns prompts into context tokens, and how (see cxrgen.text)."""

    backend: str = "clip"  # clip | bert | biomedclip | minilm | scratch
    name_or_path: str | None = None  # hub id or local dir; None: the back-end's default
    subfolder: str | None = None  # model folder inside name_or_path (SD layout: "text_encoder")
    tokenizer_subfolder: str | None = None  # None: same as subfolder (SD layout: "tokenizer")
    max_length: int = 77  # token limit (CLIP / RoentGen: 77); longer prompts are truncated
    pad_to_max_length: bool = True  # fixed (B, context_length) context; False: pad to the longest
    # tokens: one context vector per token (max_length of them); sentences: one per sentence, the
    # sentence encoded alone and mean-pooled (sentence-transformers' pooling; max_sentences of them);
    # both: the sentence vectors, then the token vectors
    pooling: str = "tokens"
    max_sentences: int = 16  # pooling=sentences: sentences kept per report (more are dropped, with a warning)
    trainable: bool = False  # False: frozen (no grad, eval mode)
    null_prompt: str = ""  # the unconditional prompt for classifier-free guidance
    trust_remote_code: bool = False  # needed by some hub models (e.g. CXR-BERT-specialized)
    # scratch back-end only: a small pre-norm transformer trained with the denoiser
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_std: float = 0.02  # std of the normal init of embeddings and linear weights
    seed: int = 0  # seeds the init generator when none is passed to build_text_encoder

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"text.max_length={self.max_length}: give at least 2 (start + end tokens)")
        if min(self.width, self.depth, self.heads) <= 0:
            raise ConfigError("text.width, text.depth and text.heads must be positive")
        if self.width % self.heads:
            raise ConfigError(f"text.width={self.width} must be divisible by text.heads={self.heads}")
        if self.mlp_ratio <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("text.mlp_ratio must be > 0 and text.dropout in [0, 1)")
        if self.pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text.pooling={self.pooling!r}: use one of {list(TEXT_POOLINGS)}")
        if self.max_sentences < 1:
            raise ConfigError(f"text.max_sentences={self.max_sentences}: give at least 1")

    @property
    def context_length(self) -> int:
        """Context positions the denoiser receives: max_length tokens, max_sentences sentences, or both."""
        return {"tokens": self.max_length, "sentences": self.max_sentences}.get(
            self.pooling, self.max_sentences + self.max_length)


@dataclass(frozen=True)
class ModelConfig:
    """A report-to-CXR latent diffusion model: text encoder, latent autoencoder and denoiser."""

    image_size: int = 256  # pixels per side of generated images
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
