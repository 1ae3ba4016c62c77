"""Losses of the latent autoencoder: L1, structural (1 - SSIM), KL, and a PatchGAN hinge term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from cxrgen.config import ImageConfig
from cxrgen.data.images import to_unit_range
from cxrgen.errors import ConfigError


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, image_cfg: ImageConfig) -> torch.Tensor:
    """1 - mean SSIM (Wang et al. 2004, eq. 13) on [0, 1]-mapped images (no clamp: differentiable)."""
    ssim = structural_similarity_index_measure(
        to_unit_range(pred, image_cfg), to_unit_range(target, image_cfg), data_range=1.0
    )
    return 1.0 - ssim


def kl_loss(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, I)) averaged over latent elements (Kingma & Welling 2014, app. B)."""
    var = std.pow(2)
    return 0.5 * (mean.pow(2) + var - 1.0 - torch.log(var.clamp_min(torch.finfo(var.dtype).tiny))).mean()


#: PatchGAN layout of pix2pix (Isola et al. 2017, app. 6.1.2): 4x4 kernels, LeakyReLU 0.2, width x8 at most.
PATCH_KERNEL, LEAKY_SLOPE, MAX_WIDTH_MULT = 4, 0.2, 8


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): strided 4x4 convs giving one real/fake logit per patch."""

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1 or channels < 1:
            raise ConfigError(f"discriminator layers={layers}, channels={channels}: give positive numbers")
        blocks: list[nn.Module] = [_conv(in_channels, channels, stride=2), nn.LeakyReLU(LEAKY_SLOPE)]
        width = channels
        for i in range(1, layers):
            out = channels * min(2**i, MAX_WIDTH_MULT)
            stride = 2 if i < layers - 1 else 1  # the last hidden layer keeps the resolution
            blocks += [_conv(width, out, stride), nn.GroupNorm(1, out), nn.LeakyReLU(LEAKY_SLOPE)]
            width = out
        blocks.append(_conv(width, 1, stride=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h', w') for images (B, C, H, W)."""
        return self.net(images)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, PATCH_KERNEL, stride=stride, padding=1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017; as in VQGAN, Esser et al. 2021)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E[D(x_hat)]."""
    return -logits_fake.mean()
