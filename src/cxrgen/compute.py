"""Compute report: parameter counts and forward FLOPs / MACs of the model parts.

Two conventions: ``torch.utils.flop_counter.FlopCounterMode`` counts a multiply-add as 2 FLOPs, so
``gmacs = gflops / 2``. Papers (U-ViT, DiT via fvcore) usually quote MACs under the name "GFLOPs".
Only matrix products, convolutions and attention are counted; norms, activations and additions are
not (they are a few percent at most).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from cxrgen.errors import ConfigError

GIGA = 1e9
FLOPS_PER_MAC = 2  # FlopCounterMode's convention: one multiply-add = 2 FLOPs
FLOPS_TIMESTEP = 500  # any timestep: the cost does not depend on it


def count_params(module: Any, trainable_only: bool = False) -> int:
    """Number of (shared-once) parameters of a module or any object with ``parameters()``."""
    if not hasattr(module, "parameters"):
        raise ConfigError(f"cannot count parameters of a {type(module).__name__}: it has no parameters()")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention FLOPs of the CPU fused kernel, which FlopCounterMode's table leaves out."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_formulas() -> dict[Any, Any]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _cpu_sdpa_flop}


def denoiser_flops(
    denoiser: nn.Module,
    latent_shape: Sequence[int],
    context_len: int,
    context_dim: int,
    batch_size: int = 1,
) -> dict[str, float]:
    """FLOPs and MACs (in G) of one forward on ``batch_size`` samples of shape ``latent_shape`` (C, h, w).

    Runs the forward under FlopCounterMode on the module's own device (build it on
    ``torch.device("meta")`` to count a big model for free where its ops allow).
    """
    param = next(denoiser.parameters())
    device, dtype = param.device, param.dtype
    z_t = torch.zeros(batch_size, *latent_shape, device=device, dtype=dtype)  # (B, C, h, w)
    t = torch.full((batch_size,), FLOPS_TIMESTEP, device=device)  # (B,)
    context = torch.zeros(batch_size, context_len, context_dim, device=device, dtype=dtype)  # (B, L, D)
    mask = torch.ones(batch_size, context_len, dtype=torch.bool, device=device)  # (B, L)
    was_training = denoiser.training
    denoiser.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as fc:
            denoiser(z_t, t, context, mask)
    finally:
        denoiser.train(was_training)
    flops = fc.get_total_flops()
    return {"gflops_fwd": flops / GIGA, "gmacs_fwd": flops / FLOPS_PER_MAC / GIGA}


def model_info(
    denoiser: nn.Module,
    text_encoder: Any | None = None,
    autoencoder: Any | None = None,
    latent_shape: Sequence[int] = (4, 32, 32),
    context_len: int = 77,
    context_dim: int = 768,
) -> dict[str, dict[str, Any]]:
    """Params of the three parts and the denoiser's forward cost; an absent part gets params None."""
    info = {"denoiser": {"params": count_params(denoiser)}}
    info["denoiser"].update(denoiser_flops(denoiser, latent_shape, context_len, context_dim))
    for name, part in (("text_encoder", text_encoder), ("autoencoder", autoencoder)):
        info[name] = {"params": None if part is None else count_params(part)}
    return info


def count_flops(call: Any) -> float:
    """FLOPs (multiply-add = 2) of running ``call()`` once, counted by FlopCounterMode (any module signature)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as fc:
        call()
    return float(fc.get_total_flops())
