"""Pluggable image feature extractors for FID / KID and memorization: one interface, a plain dict registry.

Every extractor takes images in the project's pixel convention, (B, 1, H, W) in [-1, 1], converts
them to what its network expects (range, size, channels) and returns features (B, F):

- ``cxrgen-evaluator``: the project's own CXR DenseNet (FID_cxr), from a local folder.
- ``xrv-densenet``: torchxrayvision's DenseNet-121 (extra ``[xrv]``), weights by its own name or a
  local safetensors file; pooled penultimate features as RoentGen's FID_XRV.
- ``clip-image``: an open_clip image tower (extra ``[biomedclip]``): ``hf-hub:<id>``, ``local-dir:<dir>``
  or a folder with ``open_clip_config.json``; unnormalised image embeddings.
- ``rad-dino``: RAD-DINO (Perez-Garcia et al. 2025; CheXGenBench's FD-RadDino), a DINOv2 ViT-B/14
  trained on chest X-rays, through transformers: ``microsoft/rad-dino`` by hub id (the default) or a
  local folder; the CLS embedding (pooler output, 768-d).
- ``inception-v3``: the FID Inception network (``cxrgen.evaluate.inception``, plain torch), 2048-d pool3
  features as pytorch-fid; weights by path: pytorch-fid's or torch-fidelity's .pth, or .safetensors.

Optional packages are imported only when their extractor is built.
"""

from __future__ import annotations

import importlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from cxrgen.errors import ConfigError
from cxrgen.evaluate.evaluator import EVALUATOR_NAME, CXREvaluator, as_evaluator_input
from cxrgen.evaluate.inception import (
    FID_FEATURE_DIM,
    FID_INPUT_SIZE,
    FIDInceptionV3,
    fid_inception_input,
    inception_weights_help,
    load_fid_inception,
)

log = logging.getLogger(__name__)

PIXEL_LOW, PIXEL_HIGH = -1.0, 1.0  # the project's pixel range, what every extractor receives
XRV_INSTALL = "pip install 'cxrgen[xrv]'"
CLIP_INSTALL = "pip install 'cxrgen[biomedclip]'"
XRV_SIZE = 224  # torchxrayvision's DenseNets are trained on 224 x 224
XRV_PIXEL_MAX = 1024.0  # torchxrayvision's pixel range is [-XRV_PIXEL_MAX, XRV_PIXEL_MAX]
XRV_OP_THRESHOLDS = "op_threshs"  # a buffer of xrv's pretrained models, not part of the network
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
CLIP_PREFIXES = ("hf-hub:", "local-dir:")
#: open_clip's (= OpenAI CLIP's) normalisation, used when a model does not carry its own.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RGB_CHANNELS = 3
RAD_DINO_ID = "microsoft/rad-dino"
RAD_DINO_SIZE = 518  # its image processor: shortest side 518, centre crop 518
RAD_DINO_MEAN = (0.5307, 0.5307, 0.5307)  # its image processor's normalisation (0-1 pixels)
RAD_DINO_STD = (0.2583, 0.2583, 0.2583)
PREPROCESSOR_NAME = "preprocessor_config.json"


class ExtractorUnavailableError(ConfigError):
    """A feature extractor cannot be built here: its package, its weights or its support is missing."""


class FeatureExtractor(ABC):
    """Images (B, 1, H, W) in [-1, 1] -> features (B, F); ``name`` is the registry key."""

    name: str = ""
    feature_dim: int = 0

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, F) of images (B, 1, H, W) in [-1, 1]."""


def extract_features(extractor: FeatureExtractor, batches: Iterable[torch.Tensor],
                     progress: bool = True) -> torch.Tensor:
    """Features (N, F) on the CPU of every image in an iterable of (B, 1, H, W) batches."""
    out = [extractor.features(b).detach().float().cpu()
           for b in tqdm(batches, desc=f"features ({extractor.name})", disable=not progress)]
    if not out:
        raise ConfigError(f"no images were given to feature extractor {extractor.name!r}")
    return torch.cat(out)  # (N, F)


def _import_optional(module: str, extractor: str, install: str) -> ModuleType:
    """Import an optional package, or say which extractor needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExtractorUnavailableError(
            f"feature extractor {extractor!r} needs the package {module!r}, which is not installed ({exc}). "
            f"Install it with: {install}"
        ) from exc


# --------------------------------------------------------------------------------------------
# cxrgen-evaluator
# --------------------------------------------------------------------------------------------
class CXREvaluatorExtractor(FeatureExtractor):
    """The project's own trained CXR DenseNet: penultimate features (FID_cxr)."""

    name = EVALUATOR_NAME

    def __init__(self, evaluator: CXREvaluator) -> None:
        self.evaluator = evaluator.eval()
        self.feature_dim = evaluator.feature_dim

    @classmethod
    def load(cls, weights: str | Path | None, device: str = "cpu") -> CXREvaluatorExtractor:
        """From a folder written by ``CXREvaluator.save_pretrained`` (``cxrgen train-evaluator``)."""
        if weights is None:
            raise ConfigError(f"{EVALUATOR_NAME!r} needs weights: the output folder of `cxrgen train-evaluator`")
        return cls(CXREvaluator.from_pretrained(weights, device=device))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluator features (B, F)."""
        return self.evaluator.features(images)


# --------------------------------------------------------------------------------------------
# torchxrayvision DenseNet
# --------------------------------------------------------------------------------------------
class XRVDenseNetExtractor(FeatureExtractor):
    """torchxrayvision DenseNet-121: ReLU + global-pooled final features (1024-d), as FID_XRV."""

    name = "xrv-densenet"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.feature_dim = int(model.classifier.in_features)

    @classmethod
    def load(cls, weights: str | Path | None, device: str = "cpu") -> XRVDenseNetExtractor:
        """Weights by torchxrayvision's name (e.g. densenet121-res224-all) or a local .safetensors file."""
        xrv = _import_optional("torchxrayvision", cls.name, XRV_INSTALL)
        if weights is None:
            raise ConfigError(f"{cls.name!r} needs weights: a torchxrayvision name such as "
                              "'densenet121-res224-all' or a local .safetensors file of its state dict")
        path = Path(weights)
        if path.suffix == ".safetensors" or path.exists():
            return cls(_xrv_from_file(xrv, path).to(device))
        try:
            model = xrv.models.DenseNet(weights=str(weights))
        except (OSError, RuntimeError, ValueError) as exc:  # a failed download is a URLError (OSError)
            raise ExtractorUnavailableError(
                f"torchxrayvision could not load weights {weights!r} ({type(exc).__name__}: {exc}); offline, "
                "put the file in torchxrayvision's cache folder or give a local .safetensors state dict"
            ) from exc
        return cls(model.to(device))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> xrv pixels [-1024, 1024] at 224 x 224 -> features (B, 1024)."""
        x = as_evaluator_input(images, XRV_SIZE).to(next(self.model.parameters()).device)
        x = (x - PIXEL_LOW) / (PIXEL_HIGH - PIXEL_LOW) * (2 * XRV_PIXEL_MAX) - XRV_PIXEL_MAX
        with torch.no_grad():
            maps = F.relu(self.model.features(x))  # (B, 1024, 7, 7)
            return torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)  # (B, 1024)


def _xrv_from_file(xrv: ModuleType, path: Path) -> torch.nn.Module:
    """An xrv DenseNet with the state dict of a local safetensors file (never a pickle)."""
    if path.suffix != ".safetensors" or not path.is_file():
        raise ConfigError(
            f"xrv-densenet weights file {path}: give an existing .safetensors file (cxrgen never unpickles "
            "weights; convert a .pt once with safetensors.torch.save_file(model.state_dict(), PATH))"
        )
    state = load_file(path)
    state.pop(XRV_OP_THRESHOLDS, None)  # calibration thresholds of xrv's outputs; features do not use them
    model = xrv.models.DenseNet(weights=None, num_classes=int(state["classifier.weight"].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{path} is not a torchxrayvision DenseNet state dict: {exc}") from exc
    return model


# --------------------------------------------------------------------------------------------
# open_clip image tower
# --------------------------------------------------------------------------------------------
class CLIPImageExtractor(FeatureExtractor):
    """An open_clip image tower: ``encode_image`` embeddings (B, D), not L2-normalised."""

    name = "clip-image"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        visual = model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(preprocess.get("mean") or OPENAI_CLIP_MEAN).view(1, RGB_CHANNELS, 1, 1)
        self.std = torch.tensor(preprocess.get("std") or OPENAI_CLIP_STD).view(1, RGB_CHANNELS, 1, 1)
        self.feature_dim = int(visual.output_dim)

    @classmethod
    def load(cls, weights: str | Path | None, device: str = "cpu") -> CLIPImageExtractor:
        """``hf-hub:<id>``, ``local-dir:<dir>`` or a folder holding ``open_clip_config.json``."""
        open_clip = _import_optional("open_clip", cls.name, CLIP_INSTALL)
        source = clip_source(weights)
        try:
            model, _ = open_clip.create_model_from_pretrained(source, device=device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ExtractorUnavailableError(
                f"open_clip could not load {source!r} ({exc}); offline, give a local folder with "
                f"{OPEN_CLIP_CONFIG_NAME} and its weights"
            ) from exc
        return cls(model)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] gray -> [0, 1] RGB at the tower's size, CLIP-normalised -> embeddings (B, D)."""
        device = next(self.model.parameters()).device
        x = as_evaluator_input(images, self.image_size).to(device)
        unit = (x - PIXEL_LOW) / (PIXEL_HIGH - PIXEL_LOW)  # (B, 1, S, S) in [0, 1]
        rgb = unit.expand(-1, RGB_CHANNELS, -1, -1)  # (B, 3, S, S)
        with torch.no_grad():
            return self.model.encode_image((rgb - self.mean.to(device)) / self.std.to(device))


def clip_source(weights: str | Path | None) -> str:
    """The open_clip model name of ``weights``: an ``hf-hub:``/``local-dir:`` name or an open_clip folder."""
    if weights is None:
        raise ConfigError("'clip-image' needs weights: 'hf-hub:<id>', 'local-dir:<dir>' or an open_clip folder")
    text = str(weights)
    if text.startswith(CLIP_PREFIXES):
        return text
    if (Path(text) / OPEN_CLIP_CONFIG_NAME).is_file():
        return CLIP_PREFIXES[1] + text
    raise ConfigError(f"clip-image weights {text!r}: give 'hf-hub:<id>', 'local-dir:<dir>' or a folder "
                      f"holding {OPEN_CLIP_CONFIG_NAME}")


# --------------------------------------------------------------------------------------------
# FID InceptionV3
# --------------------------------------------------------------------------------------------
class InceptionV3Extractor(FeatureExtractor):
    """The FID Inception network (TF graph 2015-12-05, as pytorch-fid): pool3 features (B, 2048)."""

    name = "inception-v3"
    feature_dim = FID_FEATURE_DIM

    def __init__(self, model: FIDInceptionV3, image_size: int = FID_INPUT_SIZE) -> None:
        self.model = model.eval()
        self.image_size = image_size  # 299 for FID; smaller (>= 75) only to test quickly

    @classmethod
    def load(cls, weights: str | Path | None, device: str = "cpu") -> InceptionV3Extractor:
        """From a local pytorch-fid / torch-fidelity .pth state dict or a .safetensors file; never downloads."""
        if weights is None or not Path(weights).is_file():
            raise ExtractorUnavailableError(inception_weights_help(weights))
        return cls(load_fid_inception(weights, device=device))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> RGB, bilinear to 299 x 299, [-1, 1] -> pool3 features (B, 2048)."""
        x = fid_inception_input(images.to(next(self.model.parameters()).device), self.image_size)
        with torch.no_grad():
            return self.model(x)


# --------------------------------------------------------------------------------------------
# RAD-DINO (transformers Dinov2Model)
# --------------------------------------------------------------------------------------------
class RadDinoExtractor(FeatureExtractor):
    """A transformers DINOv2 image encoder (RAD-DINO): CLS embeddings (B, hidden_size), as FD-RadDino."""

    name = "rad-dino"

    def __init__(self, model: torch.nn.Module, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.model = model.eval()
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, RGB_CHANNELS, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, RGB_CHANNELS, 1, 1)
        self.feature_dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, weights: str | Path | None, device: str = "cpu") -> RadDinoExtractor:
        """By hub id (default ``microsoft/rad-dino``) or a local folder with config.json and weights."""
        transformers = _import_optional("transformers", cls.name, "pip install transformers")
        source = str(weights) if weights is not None else RAD_DINO_ID
        try:
            model = transformers.Dinov2Model.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ExtractorUnavailableError(
                f"could not load the RAD-DINO model {source!r} ({type(exc).__name__}: {exc}); offline, download "
                f"{RAD_DINO_ID} once elsewhere and give its folder: --extractor-weights rad-dino=FOLDER"
            ) from exc
        size, mean, std = _dino_preprocessing(transformers, source)
        return cls(model.to(device), size, mean, std)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] gray -> [0, 1] RGB at the processor's crop size, normalised -> CLS embeddings (B, D)."""
        device = next(self.model.parameters()).device
        x = as_evaluator_input(images, self.image_size).to(device)
        rgb = ((x - PIXEL_LOW) / (PIXEL_HIGH - PIXEL_LOW)).expand(-1, RGB_CHANNELS, -1, -1)  # (B, 3, S, S)
        with torch.no_grad():
            out = self.model(pixel_values=(rgb - self.mean.to(device)) / self.std.to(device))
        return out.pooler_output  # (B, D): the layer-normed CLS token


def _dino_preprocessing(transformers: ModuleType, source: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Crop size, mean and std of the model's preprocessor_config.json; RAD-DINO's values when it has none."""
    try:
        path = transformers.utils.cached_file(source, PREPROCESSOR_NAME, _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path is None:
        log.info("%s has no %s: using RAD-DINO's preprocessing (%d px, mean %s, std %s)", source, PREPROCESSOR_NAME,
                 RAD_DINO_SIZE, RAD_DINO_MEAN[0], RAD_DINO_STD[0])
        return RAD_DINO_SIZE, RAD_DINO_MEAN, RAD_DINO_STD
    cfg = json.loads(Path(path).read_text())
    crop = cfg.get("crop_size") or cfg.get("size") or {}
    size = int(crop.get("height", crop.get("shortest_edge", RAD_DINO_SIZE)) if isinstance(crop, dict) else crop)
    return size, tuple(cfg.get("image_mean", RAD_DINO_MEAN)), tuple(cfg.get("image_std", RAD_DINO_STD))


#: Registry: name -> loader(weights, device) -> FeatureExtractor.
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    CXREvaluatorExtractor.name: CXREvaluatorExtractor.load,
    XRVDenseNetExtractor.name: XRVDenseNetExtractor.load,
    CLIPImageExtractor.name: CLIPImageExtractor.load,
    InceptionV3Extractor.name: InceptionV3Extractor.load,
    RadDinoExtractor.name: RadDinoExtractor.load,
}


def build_extractor(name: str, weights: str | Path | None = None, device: str = "cpu") -> FeatureExtractor:
    """The feature extractor registered as ``name``, loaded from ``weights`` (a name, folder or file)."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](weights, device=device)
