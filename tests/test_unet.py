"""U-Net denoiser (diffusers UNet2DConditionModel): call signature, mask, save/load, SD config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel

from cxrgen.compute import count_params
from cxrgen.config import DenoiserConfig
from cxrgen.denoisers import UNetDenoiser, build_denoiser, denoiser_kwargs, load_denoiser
from cxrgen.errors import ConfigError

B, C, SIZE, L, D_TEXT = 3, 4, 16, 6, 16
TINY = DenoiserConfig(name="unet-tiny", sample_size=SIZE, context_dim=D_TEXT, context_len=L)


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 250, 999])
    context = torch.randn(B, L, D_TEXT, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    return z, t, context, mask


@pytest.fixture(scope="module")
def model() -> UNetDenoiser:
    torch.manual_seed(0)  # diffusers draws its init from the global generator
    return build_denoiser(TINY).eval()


def test_output_shape_odd_batch_and_timestep_types(model: UNetDenoiser) -> None:
    z, t, context, mask = _inputs()
    with torch.no_grad():
        out = model(z, t, context, mask)
        out_float = model(z, t.float(), context, mask)
        out_other = model(z, t + 7, context, mask)
    assert out.shape == (B, C, SIZE, SIZE) and torch.isfinite(out).all()
    torch.testing.assert_close(out, out_float)
    assert not torch.allclose(out, out_other)
    assert model.prediction_type == "epsilon"


def test_mask_hides_padding(model: UNetDenoiser) -> None:
    """Padded content changes nothing under the mask, and changes the output without it."""
    z, t, context, mask = _inputs()
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), D_TEXT) * 10.0
    with torch.no_grad():
        out = model(z, t, context, mask)
        torch.testing.assert_close(model(z, t, changed, mask), out, rtol=0, atol=1e-6)
        assert (model(z, t, changed, None) - model(z, t, context, None)).abs().max() > 1e-4


def test_save_load_gives_identical_output(model: UNetDenoiser, tmp_path) -> None:
    z, t, context, mask = _inputs()
    model.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_denoiser(tmp_path / "unet").eval()
    assert isinstance(loaded, UNetDenoiser) and loaded.config.block_out_channels == [32, 64]
    plain = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()  # a plain diffusers U-Net folder
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, context, mask), model(z, t, context, mask), rtol=0, atol=0)
        want = plain(z, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample
        torch.testing.assert_close(loaded(z, t, context, mask), want, rtol=0, atol=0)


def test_pretrained_by_local_sd_folder(model: UNetDenoiser, tmp_path) -> None:
    """An SD-style folder (``<root>/unet``) loads by path; the architecture is read back from it."""
    model.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    cfg = DenoiserConfig(name="sd15-unet", sample_size=SIZE, context_dim=D_TEXT, pretrained=str(tmp_path / "sd"))
    loaded = build_denoiser(cfg).eval()
    assert list(loaded.config.block_out_channels) == list(model.config.block_out_channels)  # not SD's 320..1280
    z, t, context, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, t, context, mask), model(z, t, context, mask), rtol=0, atol=0)


def test_pretrained_errors(model: UNetDenoiser, tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        build_denoiser(dataclasses.replace(TINY, pretrained=str(tmp_path / "missing")))
    model.save_pretrained(tmp_path / "sd" / "unet", safe_serialization=True)
    wrong_width = dataclasses.replace(TINY, context_dim=D_TEXT * 2, pretrained=str(tmp_path / "sd"))
    with pytest.raises(ConfigError, match="context_dim"):
        build_denoiser(wrong_width)
    same = dataclasses.replace(TINY, kwargs={"block_out_channels": [32, 64]}, pretrained=str(tmp_path / "sd"))
    assert list(build_denoiser(same).config.block_out_channels) == [32, 64]  # asked overrides = what was saved
    other = dataclasses.replace(same, kwargs={"block_out_channels": [64, 128]})
    with pytest.raises(ConfigError, match="another architecture .*block_out_channels"):
        build_denoiser(other)  # an override the loaded weights do not have is not dropped silently


def test_bf16_autocast_on_cpu(model: UNetDenoiser) -> None:
    z, t, context, mask = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, t, context, mask)
    assert out.shape == (B, C, SIZE, SIZE) and torch.isfinite(out.float()).all()


def test_sd15_preset_is_the_stable_diffusion_1x_unet() -> None:
    """SD 1.x U-Net: 4 levels (320, 640, 1280, 1280), 8 heads, 768-wide text; 860M params (model card)."""
    kwargs = denoiser_kwargs(DenoiserConfig(name="sd15-unet", sample_size=32))
    assert kwargs["block_out_channels"] == (320, 640, 1280, 1280)
    assert kwargs["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert kwargs["up_block_types"] == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert (kwargs["layers_per_block"], kwargs["attention_head_dim"], kwargs["cross_attention_dim"]) == (2, 8, 768)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**kwargs)
    assert abs(count_params(unet) / 860e6 - 1) < 0.01


@pytest.mark.parametrize(
    ("changes", "kwargs", "message"),
    [
        ({"sample_size": 15}, {}, "divisible"),
        ({}, {"norm_num_groups": 24}, "norm_num_groups"),
        ({}, {"attention_head_dim": 3}, "attention_head_dim"),
        ({}, {"block_out_channels": (32,)}, "two levels"),
        ({}, {"depth": 5}, "depth is not a parameter of UNetDenoiser; valid: .*layers_per_block"),
        ({}, {"cross_attention_dim": 8}, "set denoiser.in_channels, sample_size, context_dim"),
        ({"name": "unet-huge"}, {}, "valid names"),
    ],
)
def test_bad_configs_raise_at_construction(changes: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_denoiser(dataclasses.replace(TINY, **changes, kwargs=kwargs))
