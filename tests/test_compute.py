"""Compute report: parameter counts and forward FLOPs/MACs against hand counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cxrgen.compute import count_params, denoiser_flops, model_info
from cxrgen.config import DenoiserConfig
from cxrgen.denoisers import build_denoiser, denoiser_kwargs
from cxrgen.errors import ConfigError

C, SIZE, L, D_TEXT = 4, 32, 8, 16
TINY = DenoiserConfig(name="uvit-tiny", sample_size=SIZE, context_dim=D_TEXT, context_len=L)


def _uvit_macs(den: DenoiserConfig, n_text: int) -> int:
    """Multiply-adds of one U-ViT forward (B=1), counted by hand from the architecture."""
    cfg = SimpleNamespace(**denoiser_kwargs(den))  # the constructor's arguments: hidden_size, depth, ...
    d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    n_img = (cfg.sample_size // p) ** 2
    n = 1 + n_text + n_img
    hidden = int(cfg.mlp_ratio * d)
    block = n * (3 * d * d + d * d + 2 * d * hidden) + 2 * n * n * d  # qkv, proj, MLP; QK^T and AV
    return (
        n_img * c * p * p * d  # patch embedding conv
        + 2 * d * 4 * d  # time MLP (uvit-tiny uses one)
        + n_text * cfg.context_dim * d  # text projection
        + cfg.depth * block
        + (cfg.depth // 2) * n * 2 * d * d  # long-skip linears
        + n * d * p * p * c  # decoder linear (on every token, before the patches are kept)
        + cfg.sample_size**2 * c * c * 9  # 3x3 output conv
    )


def test_count_params_counts_shared_once_and_trainable() -> None:
    lin = nn.Linear(3, 4)  # 12 weights + 4 biases
    shared = nn.Sequential(lin, lin)
    assert count_params(lin) == 16 and count_params(shared) == 16
    lin.bias.requires_grad_(False)
    assert count_params(lin, trainable_only=True) == 12
    with pytest.raises(ConfigError, match="parameters"):
        count_params(object())


def test_uvit_flops_match_the_hand_count() -> None:
    model = build_denoiser(TINY)
    result = denoiser_flops(model, (C, SIZE, SIZE), L, D_TEXT)
    macs = _uvit_macs(TINY, L)
    assert result["gmacs_fwd"] == pytest.approx(macs / 1e9, rel=1e-9)
    assert result["gflops_fwd"] == pytest.approx(2 * result["gmacs_fwd"], rel=1e-12)
    twice = denoiser_flops(model, (C, SIZE, SIZE), L, D_TEXT, batch_size=2)
    assert twice["gflops_fwd"] == pytest.approx(2 * result["gflops_fwd"], rel=1e-9)


def test_meta_device_counts_the_same() -> None:
    on_cpu = denoiser_flops(build_denoiser(TINY), (C, SIZE, SIZE), L, D_TEXT)
    with torch.device("meta"):
        meta_model = build_denoiser(TINY)
    assert denoiser_flops(meta_model, (C, SIZE, SIZE), L, D_TEXT) == pytest.approx(on_cpu)


def test_unet_self_attention_is_counted_and_train_mode_kept() -> None:
    """Convs, linears and cross-attention grow 4x with 4x the latent area; only self-attention
    grows faster (quadratic), so a ratio above 4 shows the CPU attention kernel is counted."""
    torch.manual_seed(0)
    unet = build_denoiser(DenoiserConfig(name="unet-tiny", sample_size=16, context_dim=D_TEXT))
    unet.train()
    small = denoiser_flops(unet, (C, 16, 16), L, D_TEXT)["gflops_fwd"]
    large = denoiser_flops(unet, (C, 32, 32), L, D_TEXT)["gflops_fwd"]
    assert small > 0 and large / small > 4.5
    assert unet.training


def test_model_info_reports_all_parts() -> None:
    model = build_denoiser(TINY)
    text_encoder = nn.Linear(D_TEXT, D_TEXT)
    info = model_info(model, text_encoder, None, latent_shape=(C, SIZE, SIZE), context_len=L, context_dim=D_TEXT)
    assert info["denoiser"]["params"] == count_params(model)
    assert info["denoiser"]["gmacs_fwd"] == pytest.approx(_uvit_macs(TINY, L) / 1e9)
    assert info["text_encoder"] == {"params": D_TEXT * D_TEXT + D_TEXT}
    assert info["autoencoder"] == {"params": None}


def test_paper_gflops_are_macs() -> None:
    """Bao et al. 2023 (Table, ImageNet 256) give U-ViT-L/2 77 "GFLOPs" with one class token:
    that is our MAC count, half of FlopCounterMode's FLOPs."""
    with torch.device("meta"):
        model = build_denoiser(DenoiserConfig(name="uvit-l", context_len=1))
    result = denoiser_flops(model, (C, SIZE, SIZE), context_len=1, context_dim=768)
    assert result["gmacs_fwd"] == pytest.approx(77, rel=0.02)
