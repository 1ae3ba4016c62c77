"""Classifier-free guidance (Ho & Salimans 2022), in one place for the pipeline and training previews.

With ``w`` the guidance scale (diffusers' / Stable Diffusion's convention), the guided prediction is

    eps = eps_uncond + w * (eps_cond - eps_uncond)

which is Ho & Salimans' eq. 6, ``(1 + w') eps_cond - w' eps_uncond``, with ``w = 1 + w'``: w = 1 is
the plain conditional model, w = 0 the unconditional one, w > 1 pushes away from the unconditional
prediction. The same formula applies to v- and x0-prediction targets (they are linear in eps at fixed t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cxrgen.errors import ConfigError

#: ``denoiser(z_t, t, context, mask) -> prediction`` (cxrgen.denoisers' one call signature).
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def combine(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Guided prediction ``uncond + w * (cond - uncond)`` (Ho & Salimans 2022, eq. 6 with w = 1 + w')."""
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def needs_uncond(guidance_scale: float) -> bool:
    """Whether the unconditional pass is needed: w = 1 is the conditional prediction alone."""
    return guidance_scale != 1.0


def _pad_tokens(context: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad context (B, L, D) and mask (B, L) to ``length`` tokens (padding is masked out)."""
    extra = length - context.shape[1]
    if extra <= 0:
        return context, mask
    pad_ctx = context.new_zeros(context.shape[0], extra, context.shape[2])  # (B, extra, D)
    pad_mask = mask.new_zeros(mask.shape[0], extra)  # (B, extra)
    return torch.cat([context, pad_ctx], dim=1), torch.cat([mask, pad_mask], dim=1)


def guided_prediction(
    denoiser: Denoiser,
    z_t: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor,
    uncond_context: torch.Tensor | None,
    uncond_mask: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """The guided denoiser output (B, C, h, w), from one batched call on [uncond; cond].

    ``context``/``mask`` (B, L, D)/(B, L) are the prompts; ``uncond_*`` the null or negative prompt
    (same batch size; may be None when ``guidance_scale`` is 1, which skips the unconditional pass).
    """
    batch = z_t.shape[0]
    t = torch.as_tensor(t, device=z_t.device)
    if t.ndim == 0:
        t = t.expand(batch)  # (B,)
    if not needs_uncond(guidance_scale):
        return denoiser(z_t, t, context, mask)
    if uncond_context is None or uncond_mask is None:
        raise ConfigError(f"guidance_scale={guidance_scale} needs the unconditional context and mask")
    length = max(context.shape[1], uncond_context.shape[1])
    context, mask = _pad_tokens(context, mask, length)
    uncond_context, uncond_mask = _pad_tokens(uncond_context, uncond_mask, length)
    both = denoiser(
        torch.cat([z_t, z_t]),  # (2B, C, h, w)
        torch.cat([t, t]),  # (2B,)
        torch.cat([uncond_context, context]),  # (2B, L, D)
        torch.cat([uncond_mask, mask]),  # (2B, L)
    )
    pred_uncond, pred_cond = both.chunk(2)  # (B, C, h, w) each
    return combine(pred_uncond, pred_cond, guidance_scale)
