"""Denoisers with one call signature: ``denoiser(z_t, t, context, mask) -> prediction``.

z_t (B, C, h, w) latents, t (B,) int or float timesteps, context (B, L, D_text) text tokens, mask
(B, L) bool (True = real token); the prediction (B, C, h, w) is what ``prediction_type`` names.
"""

from cxrgen.denoisers.base import DenoiserSpec
from cxrgen.denoisers.registry import (
    DENOISERS,
    DenoiserPreset,
    build_denoiser,
    denoiser_kwargs,
    denoiser_preset,
    load_denoiser,
)
from cxrgen.denoisers.unet import UNetDenoiser
from cxrgen.denoisers.uvit import UViT

__all__ = ["DENOISERS", "DenoiserPreset", "DenoiserSpec", "UNetDenoiser", "UViT", "build_denoiser", "denoiser_kwargs",
           "denoiser_preset", "load_denoiser"]
