"""LatentCodec: a diffusers AutoencoderKL whose latent scale and shift live in its config.

Images are (B, 1, H, W) in [-1, 1]; latents are z = (m - shift) * scale with m the posterior mean
(or a sample drawn with a torch.Generator), the recipe of LDM (Rombach et al. 2022, sec. 4.3.2 and
app. G: scale = 1 / std of the first-stage latents). An RGB AutoencoderKL (Stable Diffusion's)
gets the grayscale image replicated to 3 channels and its output averaged back to 1 channel.

A saved codec folder is a plain AutoencoderKL folder (``config.json`` with ``scaling_factor`` and
``shift_factor``, and ``diffusion_pytorch_model.safetensors``); the pixel-space IdentityCodec saves
only a ``config.json`` with the same two fields.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ModelMixin

from cxrgen.config import AutoencoderConfig
from cxrgen.errors import ConfigError, DataError
from cxrgen.hub import load_pretrained

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"  # diffusers' config file name, for both codecs
_DOWN_BLOCK = "DownEncoderBlock2D"
_UP_BLOCK = "UpDecoderBlock2D"


def build_vae(cfg: AutoencoderConfig) -> AutoencoderKL:
    """A fresh, randomly initialised AutoencoderKL with the architecture fields of ``cfg``."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.vae_channels,
        out_channels=cfg.vae_channels,
        down_block_types=(_DOWN_BLOCK,) * levels,
        up_block_types=(_UP_BLOCK,) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        mid_block_add_attention=cfg.mid_block_add_attention,
        scaling_factor=1.0 if cfg.scale is None else cfg.scale,  # identity until measured
        shift_factor=0.0 if cfg.shift is None else cfg.shift,
    )


def load_vae(id_or_path: str, subfolder: str | None = None) -> AutoencoderKL:
    """Load an AutoencoderKL by hub id or local directory through diffusers (safetensors only)."""
    return load_pretrained(AutoencoderKL, id_or_path, subfolder, "an AutoencoderKL",
                           "Give a local folder holding config.json and diffusion_pytorch_model.safetensors, "
                           "or a reachable hub id.")


def _config_from_vae(vae: AutoencoderKL, base: AutoencoderConfig) -> AutoencoderConfig:
    """``base`` with the architecture fields read from ``vae`` and scale/shift resolved to floats."""
    c = vae.config
    scale = base.scale if base.scale is not None else float(c.scaling_factor)
    shift = base.shift if base.shift is not None else float(c.shift_factor or 0.0)
    return dataclasses.replace(
        base,
        vae_channels=int(c.in_channels),
        latent_channels=int(c.latent_channels),
        block_out_channels=tuple(int(w) for w in c.block_out_channels),
        layers_per_block=int(c.layers_per_block),
        norm_num_groups=int(c.norm_num_groups),
        mid_block_add_attention=bool(getattr(c, "mid_block_add_attention", True)),
        scale=scale,
        shift=shift,
    )


class _ScaledCodec(ModelMixin):
    """What every codec shares: latents z = (raw - shift) * scale, with scale and shift in ``self.cfg``.

    A ModelMixin so that a DiffusionPipeline saves and loads it with the methods below.
    """

    cfg: AutoencoderConfig

    def set_scale(self, scale: float, shift: float) -> _ScaledCodec:
        """Store a measured ``scale`` and ``shift`` in the codec config."""
        self.cfg = dataclasses.replace(self.cfg, scale=float(scale), shift=float(shift))
        self._scale_changed()
        return self

    def _scale_changed(self) -> None:
        """Hook for codecs that mirror scale/shift elsewhere."""

    @property
    def scale(self) -> float:
        """Multiplier applied after the shift: 1 / std of the training latents."""
        return float(self.cfg.scale)

    @property
    def shift(self) -> float:
        """Mean of the training latents, subtracted before scaling."""
        return float(self.cfg.shift)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """z = (latents - shift) * scale, for raw latents (e.g. sampled from a cached mean/std)."""
        return (latents - self.shift) * self.scale

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale_latents`: z / scale + shift."""
        return z / self.scale + self.shift

    def decode_unscaled(self, raw: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) from scaled latents."""
        return self.decode_unscaled(self.unscale_latents(latents))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """decode(encode(images)): the reconstruction, (B, 1, H, W)."""
        return self.decode(self.encode(images, generator))


class LatentCodec(_ScaledCodec):
    """Encode (B, 1, H, W) images to scaled latents (B, C, H/f, W/f) and decode them back."""

    def __init__(self, vae: AutoencoderKL, cfg: AutoencoderConfig | None = None) -> None:
        super().__init__()
        if int(vae.config.in_channels) not in (1, 3) or vae.config.in_channels != vae.config.out_channels:
            raise ConfigError(
                f"AutoencoderKL with in/out channels {vae.config.in_channels}/{vae.config.out_channels}: "
                "LatentCodec needs 1 (grayscale) or 3 (RGB) channels in and out"
            )
        self.vae = vae
        self.cfg = _config_from_vae(vae, cfg or AutoencoderConfig())
        self._sync_vae_config()

    # --- construction and persistence --------------------------------------------------------
    @classmethod
    def build(cls, cfg: AutoencoderConfig) -> LatentCodec | IdentityCodec:
        """Load ``cfg.pretrained`` (hub id or path) or build a fresh codec; ``kind="identity"``: pixel space."""
        if cfg.kind == "identity":
            return IdentityCodec(cfg)
        if cfg.pretrained is None:
            return cls(build_vae(cfg), cfg)
        log.info("loading AutoencoderKL %s (subfolder %s)", cfg.pretrained, cfg.subfolder)
        return cls(load_vae(cfg.pretrained, cfg.subfolder), cfg)

    @classmethod
    def from_pretrained(cls, dir_or_id: str | Path, subfolder: str | None = None,
                        **kwargs: object) -> LatentCodec | IdentityCodec:
        """Load a saved codec (an identity one too), or any AutoencoderKL (scale/shift from its config).

        Further keyword arguments (diffusers' loading options) are accepted and ignored.
        """
        config = Path(dir_or_id) / (subfolder or "") / CONFIG_NAME
        if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "IdentityCodec":
            return IdentityCodec.from_pretrained(dir_or_id, subfolder)
        return cls(load_vae(str(dir_or_id), subfolder), AutoencoderConfig(pretrained=str(dir_or_id), subfolder=subfolder))

    def save_pretrained(self, out_dir: str | Path, **kwargs: object) -> Path:
        """Write the AutoencoderKL (config.json with scaling_factor / shift_factor, safetensors) to ``out_dir``."""
        out_dir = Path(out_dir)
        self._sync_vae_config()
        self.vae.save_pretrained(out_dir, safe_serialization=True)
        return out_dir

    def _scale_changed(self) -> None:
        self._sync_vae_config()

    def _sync_vae_config(self) -> None:
        """Mirror scale/shift into diffusers' scaling_factor/shift_factor, so config.json agrees."""
        self.vae.register_to_config(scaling_factor=self.scale, shift_factor=self.shift)

    # --- properties --------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """Channels C of the latents."""
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        """Spatial factor f between image and latent: one 2x downsampling per level but the last."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --- encode / decode ---------------------------------------------------------------------
    def _to_vae_channels(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise DataError(f"images must be (B, 1, H, W) grayscale; got shape {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise DataError(f"image size {tuple(images.shape[-2:])} must be divisible by f={f}")
        images = images.to(device=self.vae.device, dtype=self.vae.dtype)
        if self.vae.config.in_channels == 3:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W): gray replicated to RGB
        return images

    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior (mean, std), each (B, C, h, w): what the latent cache stores."""
        posterior = self.vae.encode(self._to_vae_channels(images)).latent_dist
        return posterior.mean, posterior.std

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents (B, C, h, w): the posterior mean, or a sample when a generator is given."""
        mean, std = self.encode_distribution(images)
        raw = mean if generator is None else sample_posterior(mean, std, generator)
        return self.scale_latents(raw)

    def decode_unscaled(self, raw: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) from raw (unscaled) latents; an RGB decoder's channels are averaged."""
        raw = raw.to(device=self.vae.device, dtype=self.vae.dtype)
        images = self.vae.decode(raw).sample  # (B, vae_channels, H, W)
        return images.mean(dim=1, keepdim=True) if images.shape[1] != 1 else images  # (B, 1, H, W)


class IdentityCodec(_ScaledCodec):
    """No autoencoder: the denoiser works on pixels (f = 1, C = 1); LatentCodec's interface, no weights.

    For small images (the 32x32 phantom tests) where a learned codec costs more than it saves.
    Latents are z = (image - shift) * scale with scale 1 and shift 0 unless set.
    """

    def __init__(self, cfg: AutoencoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AutoencoderConfig(kind="identity")
        if cfg.kind != "identity":
            raise ConfigError(f"IdentityCodec got autoencoder.kind={cfg.kind!r}: use LatentCodec.build for it")
        self.cfg = dataclasses.replace(cfg, scale=1.0 if cfg.scale is None else cfg.scale,
                                       shift=0.0 if cfg.shift is None else cfg.shift)

    def save_pretrained(self, out_dir: str | Path, **kwargs: object) -> Path:
        """Write ``config.json`` (class IdentityCodec, scaling_factor, shift_factor) into ``out_dir``; no weights."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": type(self).__name__, "scaling_factor": self.scale, "shift_factor": self.shift}
        (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return out_dir

    @classmethod
    def from_pretrained(cls, dir_or_id: str | Path, subfolder: str | None = None, **kwargs: object) -> IdentityCodec:
        """Load a folder written by :meth:`save_pretrained`."""
        path = Path(dir_or_id) / (subfolder or "") / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no {CONFIG_NAME} in {path.parent}: give a folder written by save_pretrained")
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(AutoencoderConfig(kind="identity", scale=float(saved["scaling_factor"]),
                                     shift=float(saved["shift_factor"])))

    @property
    def latent_channels(self) -> int:
        """Channels C of the 'latents': the one grayscale channel."""
        return 1

    @property
    def downsample_factor(self) -> int:
        """No downsampling: f = 1."""
        return 1

    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, zeros): a point mass at the pixels, each (B, 1, H, W)."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise DataError(f"images must be (B, 1, H, W) grayscale; got shape {tuple(images.shape)}")
        images = images.float()
        return images, torch.zeros_like(images)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled pixels (B, 1, H, W); ``generator`` is accepted for LatentCodec's signature (nothing to sample)."""
        return self.scale_latents(self.encode_distribution(images)[0])

    def decode_unscaled(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents are the pixels."""
        return raw


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw m + std * eps of the diagonal Gaussian posterior, eps from ``generator``."""
    eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
    return mean + std * eps.to(mean.device)


def _batches(images_or_loader: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield (B, 1, H, W) tensors from a tensor or an iterable of tensors / (tensor, ...) tuples."""
    if isinstance(images_or_loader, torch.Tensor):
        yield from images_or_loader.split(batch_size)
        return
    for item in images_or_loader:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def measure_scale(
    codec: LatentCodec,
    images_or_loader: torch.Tensor | Iterable,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> tuple[float, float]:
    """(scale, shift) = (1 / std, mean) of the unscaled latents of ``images_or_loader`` (LDM app. G).

    Latents are posterior means, or samples when a ``generator`` is given (LDM samples).
    """
    was_training = codec.training
    codec.eval()
    count, total, total_sq = 0, 0.0, 0.0
    for images in _batches(images_or_loader, batch_size):
        mean, std = codec.encode_distribution(images)
        raw = mean if generator is None else sample_posterior(mean, std, generator)
        raw = raw.double()
        count += raw.numel()
        total += float(raw.sum())
        total_sq += float((raw * raw).sum())
    codec.train(was_training)
    if count < 2:
        raise DataError("measure_scale needs at least one image; give a non-empty tensor or loader")
    shift = total / count
    var = max(total_sq / count - shift * shift, 0.0) * count / (count - 1)
    if var <= 0.0:
        raise DataError("latents have zero spread; cannot measure a scale (is the image set constant?)")
    return 1.0 / var**0.5, shift
