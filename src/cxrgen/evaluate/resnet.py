"""A narrow ResNet (He et al. 2016, "Deep residual learning for image recognition") for CPU-sized evaluators.

Same interface as ``cxrgen.evaluate.networks.DenseNet`` (``features`` (B, F), ``forward`` logits,
``num_features``, ``classifier``), so ``CXREvaluator`` can hold either. A 5x5 stride-2 stem and one
stride-2 basic block per stage bring 224 px to 7 px in five halvings; the pooled width is the last
stage's (256 for ``resnet-narrow``), small enough for FID on a few hundred images. Plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrgen.errors import ConfigError
from cxrgen.evaluate.networks import init_densenet

STEM_KERNEL, STEM_STRIDE = 5, 2


@dataclass(frozen=True)
class ResNetSize:
    """Stem width and one width per stride-2 stage (each a basic block: two 3x3 convs and a skip)."""

    stem_width: int
    widths: tuple[int, ...]


#: Size registry. ``resnet-narrow``: 1.18 M parameters, 256-d features, ~24 training images/s at 224 px on one CPU core.
RESNET_SIZES: dict[str, ResNetSize] = {
    "resnet-narrow": ResNetSize(stem_width=16, widths=(32, 64, 128, 256)),
    "resnet-tiny": ResNetSize(stem_width=8, widths=(16, 32)),
}


def resnet_size(name: str) -> ResNetSize:
    """The registry entry ``name``."""
    if name not in RESNET_SIZES:
        raise ConfigError(f"unknown ResNet size {name!r}; choose one of {sorted(RESNET_SIZES)}")
    return RESNET_SIZES[name]


class BasicBlock(nn.Module):
    """conv3x3/s-BN-ReLU-conv3x3-BN plus a (1x1/s projected) skip, then ReLU (He et al. 2016, fig. 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.skip(x))


class NarrowResNet(nn.Module):
    """Stem, stride-2 basic blocks, global average pool; ``features`` (B, F), ``forward`` logits."""

    def __init__(self, size: ResNetSize, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, size.stem_width, STEM_KERNEL, STEM_STRIDE, STEM_KERNEL // 2, bias=False),
            nn.BatchNorm2d(size.stem_width), nn.ReLU())
        widths = (size.stem_width, *size.widths)
        self.blocks = nn.Sequential(*(BasicBlock(a, b, 2) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        self.num_features = widths[-1]
        self.classifier = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage maps: (B, C_in, H, W) -> (B, F)."""
        maps = self.blocks(self.stem(x))  # (B, F, H / 32, W / 32)
        return torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.classifier(self.features(x))


def build_resnet(name: str, in_channels: int = 1, num_classes: int = 2,
                 generator: torch.Generator | None = None) -> NarrowResNet:
    """A NarrowResNet of registry size ``name``, He-initialised from ``generator``; the last BN of each
    residual branch starts at zero (Goyal et al. 2017) so every block starts as its skip."""
    model = NarrowResNet(resnet_size(name), in_channels, num_classes)
    init_densenet(model, generator if generator is not None else torch.Generator().manual_seed(0))
    for block in model.blocks:
        nn.init.zeros_(block.norm2.weight)
    return model
