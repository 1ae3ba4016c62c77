"""Pixel-space models: the identity codec (autoencoder.kind=identity) behind LatentCodec's interface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import WIDTH, make_bert

from cxrgen.autoencoder import IdentityCodec, LatentCodec
from cxrgen.config import AutoencoderConfig, ModelConfig, SamplingConfig, ScheduleConfig, from_dict
from cxrgen.errors import ConfigError, DataError
from cxrgen.parts import build_parts, latent_shape
from cxrgen.pipeline import CXRPipeline
from cxrgen.samplers import training_scheduler

SIZE = 32


def pixel_model_config(bert_dir: Path) -> ModelConfig:
    """32 px images denoised in pixel space (1x32x32) by a U-ViT with 4x4 patches."""
    return from_dict(ModelConfig, {
        "image_size": SIZE,
        "text_encoder": {"backend": "bert", "name_or_path": str(bert_dir), "max_length": 16},
        "autoencoder": {"kind": "identity"},
        "denoiser": {"name": "uvit-tiny", "in_channels": 1, "sample_size": SIZE, "kwargs": {"patch_size": 4},
                     "context_dim": WIDTH, "context_len": 16},
    })  # fmt: skip


def save_pixel_pipeline(root: Path) -> Path:
    """A random tiny pixel-space pipeline saved under ``root/model`` (test-side seeding)."""
    torch.manual_seed(0)
    cfg = pixel_model_config(make_bert(root / "bert"))
    parts = build_parts(cfg)
    scheduler = training_scheduler(ScheduleConfig(num_train_timesteps=100), cfg.denoiser.prediction_type)
    pipe = CXRPipeline(parts.text_encoder, parts.autoencoder, parts.denoiser, scheduler, SIZE,
                       SamplingConfig(sampler="ddim", steps=2, guidance_scale=2.0))
    return pipe.save_pretrained(root / "model")


def test_identity_codec_is_the_identity_with_scale_and_shift() -> None:
    codec = LatentCodec.build(AutoencoderConfig(kind="identity"))
    assert isinstance(codec, IdentityCodec) and codec.latent_channels == 1 and codec.downsample_factor == 1
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    mean, std = codec.encode_distribution(images)
    assert torch.equal(mean, images) and torch.equal(std, torch.zeros_like(images))
    assert torch.equal(codec(images), images)
    codec.set_scale(2.0, 0.5)
    z = codec.encode(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, (images - 0.5) * 2.0)
    torch.testing.assert_close(codec.decode(z), images)
    with pytest.raises(DataError, match="grayscale"):
        codec.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="kind"):
        AutoencoderConfig(kind="vq")
    with pytest.raises(ConfigError, match="kind=.kl."):
        IdentityCodec(AutoencoderConfig())


def test_identity_codec_saves_config_only_and_loads_through_latent_codec(tmp_path: Path) -> None:
    codec = IdentityCodec(AutoencoderConfig(kind="identity")).set_scale(1.5, -0.1)
    codec.save_pretrained(tmp_path / "ae")
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == ["config.json"]
    loaded = LatentCodec.from_pretrained(tmp_path / "ae")
    assert isinstance(loaded, IdentityCodec) and (loaded.scale, loaded.shift) == (1.5, -0.1)
    assert IdentityCodec.from_pretrained(tmp_path / "ae").scale == 1.5
    with pytest.raises(ConfigError, match="config.json"):
        IdentityCodec.from_pretrained(tmp_path / "missing")


def test_pixel_model_parts_and_pipeline_round_trip(tmp_path: Path) -> None:
    cfg = pixel_model_config(make_bert(tmp_path / "bert"))
    assert latent_shape(cfg) == (1, SIZE, SIZE)
    saved = save_pixel_pipeline(tmp_path)
    pipe = CXRPipeline.from_pretrained(saved)
    assert isinstance(pipe.autoencoder, IdentityCodec)
    gen = torch.Generator().manual_seed(0)
    out = pipe(["left pleural effusion"], num_images_per_prompt=2, generator=gen, progress=False)
    assert out.images.shape == (2, 1, SIZE, SIZE)
    assert out.images.min() >= -1 and out.images.max() <= 1
    again = CXRPipeline.from_pretrained(saved)(["left pleural effusion"], num_images_per_prompt=2,
                                               generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out.images, again.images)
