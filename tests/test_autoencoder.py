"""LatentCodec: tiny random AutoencoderKLs saved to tmp dirs and loaded back by path (no downloads)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from cxrgen.autoencoder import LatentCodec, measure_scale, sample_posterior
from cxrgen.config import AutoencoderConfig, load_config, save_config
from cxrgen.errors import ConfigError, DataError

SIZE = 32
F8_WIDTHS = (8, 16, 16, 16)  # four levels: f = 8
F4_WIDTHS = (8, 16, 16)  # three levels: f = 4


def tiny_cfg(widths: tuple[int, ...] = F8_WIDTHS, **kw) -> AutoencoderConfig:
    return AutoencoderConfig(block_out_channels=widths, latent_channels=4, layers_per_block=1,
                             norm_num_groups=4, **kw)


def tiny_codec(seed: int = 0, widths: tuple[int, ...] = F8_WIDTHS, **kw) -> LatentCodec:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentCodec.build(tiny_cfg(widths, **kw)).eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, SIZE, SIZE), generator=g) * 2 - 1  # (B, 1, H, W) in [-1, 1]


def save_rgb_vae(root: Path, scaling_factor: float) -> Path:
    """A Stable-Diffusion-like repository layout: root/vae/{config.json, *.safetensors}."""
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=F8_WIDTHS,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        scaling_factor=scaling_factor)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    return root


@pytest.mark.parametrize(("widths", "factor"), [(F8_WIDTHS, 8), (F4_WIDTHS, 4)])
def test_encode_decode_shapes_and_downsampling_factor(widths, factor):
    codec = tiny_codec(widths=widths)
    x = images(3)
    with torch.no_grad():
        z = codec.encode(x)
        y = codec.decode(z)
    assert codec.downsample_factor == factor
    assert z.shape == (3, 4, SIZE // factor, SIZE // factor)
    assert y.shape == x.shape


def test_encode_is_shifted_and_scaled_posterior_mean():
    codec = tiny_codec().set_scale(2.5, 0.3)
    x = images()
    with torch.no_grad():
        mean, std = codec.encode_distribution(x)
        z = codec.encode(x)
        direct = codec.vae.encode(x).latent_dist
    torch.testing.assert_close(mean, direct.mean)
    torch.testing.assert_close(std, direct.std)
    torch.testing.assert_close(z, (mean - 0.3) * 2.5)
    torch.testing.assert_close(codec.unscale_latents(z), mean)


def test_decode_undoes_scale_before_the_decoder():
    codec = tiny_codec().set_scale(0.7, -0.2)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = codec.vae.decode(z / 0.7 - 0.2).sample
        torch.testing.assert_close(codec.decode(z), expected)


def test_posterior_sampling_uses_the_generator():
    codec = tiny_codec()
    x = images()
    with torch.no_grad():
        a = codec.encode(x, generator=torch.Generator().manual_seed(5))
        b = codec.encode(x, generator=torch.Generator().manual_seed(5))
        c = codec.encode(x, generator=torch.Generator().manual_seed(6))
        m = codec.encode(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, m)
    torch.testing.assert_close(m, codec.encode(x))  # no generator: the deterministic mean


def test_sample_posterior_is_mean_plus_std_times_noise():
    mean, std = torch.zeros(4000), torch.full((4000,), 2.0)
    s = sample_posterior(mean + 1.0, std, torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - 1.0) < 0.15
    assert abs(float(s.std()) - 2.0) < 0.15


def test_save_load_identical_outputs_and_config(tmp_path):
    codec = tiny_codec().set_scale(1.7, 0.4)
    codec.save_pretrained(tmp_path / "codec")
    files = {p.name for p in (tmp_path / "codec").iterdir()}
    assert files == {"config.json", "diffusion_pytorch_model.safetensors"}  # a plain AutoencoderKL folder
    assert not any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in files)
    loaded = LatentCodec.from_pretrained(tmp_path / "codec").eval()
    assert dataclasses.replace(loaded.cfg, pretrained=None) == codec.cfg
    assert (loaded.scale, loaded.shift) == (1.7, 0.4)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), codec.encode(x), rtol=0, atol=0)
        z = codec.encode(x)
        torch.testing.assert_close(loaded.decode(z), codec.decode(z), rtol=0, atol=0)
    diffusers_cfg = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert (diffusers_cfg["scaling_factor"], diffusers_cfg["shift_factor"]) == (1.7, 0.4)


def test_scale_and_shift_round_trip_through_the_config_yaml(tmp_path):
    cfg = tiny_cfg(scale=3.25, shift=-0.5)
    save_config(cfg, tmp_path / "ae.yaml")
    back = load_config(AutoencoderConfig, tmp_path / "ae.yaml")
    assert back == cfg
    codec = LatentCodec.build(back)
    assert (codec.scale, codec.shift) == (3.25, -0.5)
    assert (codec.vae.config.scaling_factor, codec.vae.config.shift_factor) == (3.25, -0.5)


def test_fresh_codec_without_measured_scale_is_identity():
    codec = tiny_codec()
    assert (codec.scale, codec.shift) == (1.0, 0.0)


@pytest.mark.parametrize("scaling_factor", [0.18215, 0.37])
def test_rgb_vae_by_path_with_subfolder(tmp_path, scaling_factor):
    root = save_rgb_vae(tmp_path / "sd", scaling_factor)
    codec = LatentCodec.from_pretrained(root, subfolder="vae").eval()
    written = json.loads((root / "vae" / "config.json").read_text())["scaling_factor"]
    assert codec.scale == written == scaling_factor  # from the VAE's config, not a literal
    assert codec.shift == 0.0  # SD's VAE has no shift_factor
    assert codec.cfg.vae_channels == 3
    x = images()
    with torch.no_grad():
        z = codec.encode(x)
        rgb = codec.vae.encode(x.repeat(1, 3, 1, 1)).latent_dist.mean  # gray replicated in
        torch.testing.assert_close(z, rgb * scaling_factor)
        y = codec.decode(z)
        expected = codec.vae.decode(rgb).sample.mean(dim=1, keepdim=True)  # RGB averaged out
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected)


def test_rgb_vae_through_config_pretrained_field(tmp_path):
    root = save_rgb_vae(tmp_path / "sd", 0.18215)
    codec = LatentCodec.build(AutoencoderConfig(pretrained=str(root), subfolder="vae", scale=0.5))
    assert codec.scale == 0.5  # a measured scale in the config wins over the VAE's own
    assert codec.cfg.block_out_channels == F8_WIDTHS  # architecture read from the loaded VAE
    codec.save_pretrained(tmp_path / "saved")
    again = LatentCodec.from_pretrained(tmp_path / "saved")
    same = dataclasses.replace(again.cfg, pretrained=codec.cfg.pretrained, subfolder=codec.cfg.subfolder)
    assert same == codec.cfg and again.cfg.vae_channels == 3  # all but where it was loaded from


def test_measure_scale_is_inverse_std_and_mean_of_latents():
    codec = tiny_codec()
    x = images(6, seed=1)
    scale, shift = measure_scale(codec, x, batch_size=4)
    with torch.no_grad():
        mean, _ = codec.encode_distribution(x)
    assert shift == pytest.approx(float(mean.mean()), rel=1e-4, abs=1e-6)
    assert scale == pytest.approx(1.0 / float(mean.std()), rel=1e-4)
    codec.set_scale(scale, shift)
    with torch.no_grad():
        z = codec.encode(x)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)


def test_measure_scale_accepts_a_loader_of_tuples_and_samples_with_a_generator():
    codec = tiny_codec()
    x = images(4, seed=2)
    from_tensor = measure_scale(codec, x)
    from_loader = measure_scale(codec, [(x[:2], "ignored"), (x[2:], "ignored")])
    assert from_loader == pytest.approx(from_tensor)
    sampled = measure_scale(codec, x, generator=torch.Generator().manual_seed(0))
    assert sampled[0] < from_tensor[0]  # posterior noise widens the latents: smaller 1 / std


def test_measure_scale_rejects_constant_or_empty_input():
    codec = tiny_codec()
    with pytest.raises(DataError):
        measure_scale(codec, [])


def test_bad_inputs_raise_specific_errors(tmp_path):
    codec = tiny_codec()
    with pytest.raises(DataError, match="grayscale"):
        codec.encode(torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(DataError, match="divisible"):
        codec.encode(torch.zeros(1, 1, SIZE + 4, SIZE))
    with pytest.raises(ConfigError, match="cannot load"):
        LatentCodec.from_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError):
        tiny_cfg(widths=(8, 10))  # not divisible by norm_num_groups
    with pytest.raises(ConfigError):
        tiny_cfg(vae_channels=2)
    with pytest.raises(ConfigError):
        tiny_cfg(scale=-1.0)
