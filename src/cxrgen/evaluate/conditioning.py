"""Conditioning gain: how much a model's denoising loss on held-out images drops when it reads the report.

For held-out (image, report) pairs, the same noise and timesteps are denoised twice: with the
report's context and with the null prompt's. ``gain = 1 - loss_text / loss_null`` is 0 for a model
that ignores the text and grows as the text tells it more about the image. It needs no sampling and
no evaluator network, so it separates text encoders early in training, when samples are still poor
(a held-out, text-conditional version of the diffusion training loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cxrgen.errors import DataError
from cxrgen.objective import diffusion_target, noise_latents


@torch.no_grad()
def conditioning_gain(pipe, images: torch.Tensor, prompts: Sequence[str], n_timesteps: int = 8,
                      seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Held-out denoising loss with the report vs with the null prompt, at ``n_timesteps`` stratified t per image.

    ``images``: (N, 1, H, W) in the pipeline's pixel range; ``prompts``: N report texts. Noise and
    timesteps come from a generator seeded with ``seed``, so two models see identical draws.
    Returns loss_text, loss_null, gain and n.
    """
    if len(images) != len(prompts) or len(prompts) == 0:
        raise DataError(f"{len(images)} images for {len(prompts)} prompts: give one report per image (and >= 1)")
    den, codec, text, sched = pipe.denoiser, pipe.autoencoder, pipe.text_encoder, pipe.scheduler
    kind = getattr(den, "prediction_type", "epsilon")
    steps = sched.config.num_train_timesteps
    gen = torch.Generator().manual_seed(seed)
    device = pipe.device
    sums = {"text": 0.0, "null": 0.0}
    count = 0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        z0 = codec.encode(images[start:start + batch_size].to(device))  # (B, C, h, w), scaled posterior mean
        b = z0.shape[0]
        context, mask = text.encode(chunk)  # (B, L, D), (B, L)
        null_context, null_mask = text.encode_null(b)
        for k in range(n_timesteps):  # stratified: one t per stratum of [0, steps)
            lo, hi = k * steps // n_timesteps, (k + 1) * steps // n_timesteps
            t = torch.randint(lo, hi, (b,), generator=gen).to(device)
            eps = torch.randn(z0.shape, generator=gen).to(device)
            z_t = noise_latents(sched, z0, eps, t)  # DDPM add_noise, or the flow path at s = t / T
            target = diffusion_target(sched, z0, eps, t, kind).float()
            for name, (c, m) in (("text", (context, mask)), ("null", (null_context, null_mask))):
                pred = den(z_t, t, c, m).float()
                sums[name] += F.mse_loss(pred, target, reduction="sum").item()
        count += b * n_timesteps * z0[0].numel()
    loss_text, loss_null = sums["text"] / count, sums["null"] / count
    return {"loss_text": loss_text, "loss_null": loss_null, "gain": 1.0 - loss_text / loss_null,
            "n": len(prompts), "timesteps_per_image": n_timesteps}
