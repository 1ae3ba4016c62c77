"""A compact DenseNet-BC (Huang et al. 2017, "Densely connected convolutional networks") in plain torch.

The layer layout follows the ImageNet DenseNet of the paper (table 1) and torchvision's
implementation, so ``densenet121`` has the same parameters as torchvision's model up to the stem
(1 input channel here) and the classifier. No torchvision import: the core of cxrgen does not
depend on it. Sizes live in a small registry (``DENSENET_SIZES``) of preset fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrgen.errors import ConfigError

STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 7, 2, 3  # 7x7/2 conv, then 3x3/2 max pool (table 1)
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1
COMPRESSION = 0.5  # theta: a transition layer keeps this share of the feature maps (the "C" of -BC)


@dataclass(frozen=True)
class DenseNetSize:
    """Architecture of one DenseNet-BC: growth rate k, layers per dense block, stem width, bottleneck."""

    growth_rate: int
    block_config: tuple[int, ...]
    num_init_features: int
    bn_size: int = 4  # bottleneck 1x1 conv width = bn_size * growth_rate


#: Size registry. densenet121 is the ImageNet / torchxrayvision / RoentGen evaluator shape.
DENSENET_SIZES: dict[str, DenseNetSize] = {
    "densenet121": DenseNetSize(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet-small": DenseNetSize(growth_rate=12, block_config=(4, 8, 12, 8), num_init_features=32),
    "densenet-tiny": DenseNetSize(growth_rate=8, block_config=(2, 2), num_init_features=8, bn_size=2),
}


def densenet_size(name: str, **overrides: int | tuple[int, ...] | None) -> DenseNetSize:
    """The preset ``name`` with the non-None ``overrides`` (growth_rate, block_config, ...) applied."""
    if name not in DENSENET_SIZES:
        raise ConfigError(f"unknown DenseNet size {name!r}; choose one of {sorted(DENSENET_SIZES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(DenseNetSize)})
    if unknown:
        raise ConfigError(f"unknown DenseNet field(s) {unknown}")
    if "block_config" in given:
        given["block_config"] = tuple(int(n) for n in given["block_config"])
    return dataclasses.replace(DENSENET_SIZES[name], **given)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck, 4k maps) then BN-ReLU-Conv3x3 (k maps): the "B" layer, eq. (2)."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_features)
        self.conv1 = nn.Conv2d(in_features, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """New feature maps (B, k, H, W) from the concatenation of all earlier ones (B, C, H, W)."""
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return F.dropout(out, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else out


class DenseBlock(nn.Module):
    """L dense layers; layer l sees [x_0, ..., x_{l-1}] concatenated on channels (eq. 2)."""

    def __init__(self, num_layers: int, in_features: int, growth_rate: int, bn_size: int,
                 drop_rate: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_features + i * growth_rate, growth_rate, bn_size, drop_rate) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C + L k, H, W)."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (compression theta) then 2x2 average pooling, between dense blocks."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-BC: stem, dense blocks with transitions, final BN; ``features`` (B, F), ``forward`` logits."""

    def __init__(self, size: DenseNetSize, in_channels: int = 1, num_classes: int = 1000,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        width = size.num_init_features
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING),
        )
        stages: list[nn.Module] = []
        for i, num_layers in enumerate(size.block_config):
            stages.append(DenseBlock(num_layers, width, size.growth_rate, size.bn_size, drop_rate))
            width += num_layers * size.growth_rate
            if i != len(size.block_config) - 1:
                out = int(width * COMPRESSION)
                stages.append(Transition(width, out))
                width = out
        self.blocks = nn.Sequential(*stages)
        self.final_norm = nn.BatchNorm2d(width)
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: final BN-ReLU, global average pool; (B, C_in, H, W) -> (B, F)."""
        maps = F.relu(self.final_norm(self.blocks(self.stem(x))))  # (B, F, h, w)
        return torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.classifier(self.features(x))


def init_densenet(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """He-normal convs (He et al. 2015), BN to identity, zero biases; all draws from ``generator``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = module.in_features**-0.5  # torch's default Linear weight range
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            nn.init.zeros_(module.bias)
    return model


def build_densenet(name: str, in_channels: int = 1, num_classes: int = 1000, drop_rate: float = 0.0,
                   generator: torch.Generator | None = None,
                   **overrides: int | tuple[int, ...] | None) -> DenseNet:
    """A DenseNet of registry size ``name`` (fields overridable), initialised from ``generator``."""
    model = DenseNet(densenet_size(name, **overrides), in_channels, num_classes, drop_rate)
    return init_densenet(model, generator if generator is not None else torch.Generator().manual_seed(0))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
