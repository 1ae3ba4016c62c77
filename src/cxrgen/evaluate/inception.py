"""The FID Inception network in plain torch: pool3 features (2048-d), the feature space of FID.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule ...") uses Inception-v3
(Szegedy et al. 2016, "Rethinking the Inception architecture") as frozen in TensorFlow's graph
``inception-2015-12-05``. pytorch-fid ports it as torchvision's Inception3 with the blocks
``FIDInceptionA/C/E_1/E_2``; torch-fidelity as ``FeatureExtractorInceptionV3``. The graph differs from
torchvision's ImageNet Inception3 in three ways, all reproduced here: the 3x3 average pools of the A,
C and E blocks ignore the zero padding (``count_include_pad=False``), the last E block pools its
branch with a max instead of an average, and the classifier has 1008 classes (unused for FID).

Weights are read from a local file only (no download): pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``,
through ``torch.load(weights_only=True)`` (tensors only, never arbitrary objects), or a
``.safetensors`` file. Module names equal pytorch-fid's state-dict keys (torchvision's Inception3
names, e.g. ``Mixed_7c.branch3x3dbl_3a.bn.running_var``). torch-fidelity's file uses the very same
keys (its extra modules ``MaxPool_1/2`` and ``AvgPool`` hold no tensors); neither file stores the
BatchNorm ``num_batches_tracked`` counters, which are not needed in evaluation and may be absent.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cxrgen.errors import ConfigError, DataError
from cxrgen.evaluate.networks import init_densenet

log = logging.getLogger(__name__)

FID_INPUT_SIZE = 299  # the graph's input size; pytorch-fid resizes every image to it
MIN_INPUT_SIZE = 75  # smallest input the strided layers reduce to a 1 x 1 map (torchvision's min_size)
FID_FEATURE_DIM = 2048  # pool3: global average of Mixed_7c
FID_NUM_CLASSES = 1008  # the 2015-12-05 graph's softmax width (1000 ImageNet classes + 8 unused)
RGB_CHANNELS = 3
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon in the graph (torchvision's BasicConv2d uses the same)
POOL_KERNEL, POOL_STRIDE = 3, 2
BN_COUNTER = "num_batches_tracked"  # a BatchNorm training counter; the weight files do not store it
SAFETENSORS_SUFFIX = ".safetensors"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE}"
TORCH_FIDELITY_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TORCH_FIDELITY_FILE}"
KEYS_SHOWN = 5  # how many missing / unexpected keys an error lists
UNPICKLER_REASON = "WeightsUnpickler error:"  # the line of torch.load's weights_only error that says why


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU: every convolution of Inception-v3."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        return F.relu(self.bn(self.conv(x)))


def _same_pool(x: torch.Tensor, kind: str = "avg") -> torch.Tensor:
    """3x3 stride-1 pool keeping the size; the average ignores padding, as TensorFlow's does."""
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block (Mixed_5b-d): 1x1, 5x5, double 3x3 and pooled branches; 224 + pool_features maps."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 224 + pool_features, H, W)."""
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_same_pool(x))], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): strided 3x3, strided double 3x3, max pool; 480 + C maps."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 480 + C, (H - 3) // 2 + 1, ...)."""
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE)
        return torch.cat([self.branch3x3(x), b3, pooled], dim=1)


class InceptionC(nn.Module):
    """17 x 17 block (Mixed_6b-e) with factorised 7x7 convs (1x7 then 7x1); 768 maps."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 768, H, W)."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = conv(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_same_pool(x))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a): strided 3x3, 7x7 then strided 3x3, max pool; 512 + C maps."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 512 + C, (H - 3) // 2 + 1, ...)."""
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        pooled = F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE)
        return torch.cat([b3, b7, pooled], dim=1)


class InceptionE(nn.Module):
    """8 x 8 block (Mixed_7b/7c) with split 1x3 / 3x1 branches; 2048 maps. ``pool``: "avg" or "max".

    pytorch-fid's FIDInceptionE_1 (Mixed_7b) averages; FIDInceptionE_2 (Mixed_7c) takes the max, as the
    TensorFlow graph does.
    """

    def __init__(self, in_channels: int, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ConfigError(f"InceptionE pool must be 'avg' or 'max', not {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2048, H, W)."""
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)  # (B, 768, H, W)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)  # (B, 768, H, W)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(_same_pool(x, self.pool))], dim=1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (no auxiliary head); ``forward`` gives pool3 features (B, 2048).

    Attribute names are pytorch-fid's ``fid_inception_v3()`` state-dict keys, so its weight file loads
    as is. ``fc`` (1008 classes) only holds the file's classifier; FID does not use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(RGB_CHANNELS, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (B, 3, H, W) in [-1, 1], H, W >= 75 (FID: 299) -> pool3 features (B, 2048)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147) at 299
        x = F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ... -> (B, 768, 17, 17) after Mixed_6e -> (B, 2048, 8, 8) after Mixed_7c
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 2048)


def init_fid_inception(model: FIDInceptionV3, generator: torch.Generator) -> FIDInceptionV3:
    """Random weights for tests, DenseNet's scheme: He-normal convs, identity BatchNorm, from ``generator``."""
    init_densenet(model, generator)  # it only visits Conv2d / BatchNorm2d / Linear
    return model


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------
def fid_inception_input(images: torch.Tensor, size: int = FID_INPUT_SIZE) -> torch.Tensor:
    """(B, 1, H, W) (or RGB) in [-1, 1] -> (B, 3, size, size) in [-1, 1], the network's input.

    As pytorch-fid: bilinear resize (``align_corners=False``, no antialiasing) and the range [-1, 1]
    (pytorch-fid maps its [0, 1] input by 2x - 1; ours already is [-1, 1]). Gray is replicated to RGB.
    """
    if size < MIN_INPUT_SIZE:
        raise ConfigError(f"FID Inception input size {size} is below its minimum {MIN_INPUT_SIZE} (FID uses 299)")
    if images.ndim != 4 or images.shape[1] not in (1, RGB_CHANNELS):
        raise DataError(f"images have shape {tuple(images.shape)}: give (B, 1, H, W) grayscale (or (B, 3, H, W)) "
                        "in [-1, 1]")
    x = images.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (B, C, size, size)
    return x.expand(-1, RGB_CHANNELS, -1, -1)  # (B, 3, size, size); gray replicated, RGB unchanged


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def inception_weights_help(path: str | Path | None) -> str:
    """Why the FID Inception weights are missing and where to get them (the file is never downloaded)."""
    what = "no weights file was given" if path is None else f"{path} does not exist"
    return (
        f"feature extractor 'inception-v3' needs the FID Inception weights file, and {what}. On a machine with "
        f"internet, download pytorch-fid's {PYTORCH_FID_FILE} ({PYTORCH_FID_URL}) or torch-fidelity's "
        f"{TORCH_FIDELITY_FILE} ({TORCH_FIDELITY_URL}), or convert either to .safetensors, and pass its path: "
        "--extractor-weights inception-v3=PATH. cxrgen builds the network itself (torchvision is not needed). "
        "Without the file, use 'cxrgen-evaluator' (FID_cxr), 'xrv-densenet' or 'clip-image'."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a PyTorch state dict read with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(inception_weights_help(path))
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path} is not a plain state dict of tensors: torch.load(weights_only=True) refused it "
            f"({_unpickler_reason(exc)}). cxrgen never unpickles arbitrary objects; save the network's "
            "state_dict() (torch.save or safetensors.torch.save_file) and give that file"
        ) from exc
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:  # garbage bytes raise KeyError
        raise ConfigError(f"{path} is not a readable PyTorch weight file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict of tensors (name -> tensor); "
                          "give the file pytorch-fid or torch-fidelity downloads, or a network's state_dict()")
    return dict(state)


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The sentence of torch's weights_only error that names what it refused (not its advice to unpickle)."""
    text = str(exc)
    reason = text.split(UNPICKLER_REASON, 1)[1] if UNPICKLER_REASON in text else text
    paragraph = reason.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split()).split(". ", 1)[0]  # its first sentence, on one line


def _check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise, listing a few of each, when keys are missing (BatchNorm counters aside) or unexpected."""
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(BN_COUNTER))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"{path} is not an FID Inception state dict: {len(missing)} key(s) missing (e.g. "
            f"{missing[:KEYS_SHOWN]}), {len(unexpected)} unexpected (e.g. {unexpected[:KEYS_SHOWN]}). Give "
            f"pytorch-fid's {PYTORCH_FID_FILE} or torch-fidelity's {TORCH_FIDELITY_FILE} (same keys)"
        )


def load_fid_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception with the weights of a local file (.pth state dict or .safetensors), in eval mode."""
    path = Path(path)
    state = read_state_dict(path)
    model = FIDInceptionV3()
    expected = model.state_dict()
    _check_keys(state, expected, path)
    for key in set(expected) - set(state):  # only BatchNorm counters remain missing here
        state[key] = expected[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ConfigError(f"{path} does not fit the FID Inception: {exc}") from exc
    log.info("loaded FID Inception weights from %s", path)
    return model.to(device).eval().requires_grad_(False)
