"""Frozen dataclass configs, loaded from and saved to YAML, with checked ``a.b=v`` overrides.

Every number a stage depends on (pixel range, token limit, latent scale, ...) is a field here or
in a part's own config, never a literal in the code that uses it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrgen.errors import ConfigError

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Data configs (issue: foundation)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptConfig:
    """How a prompt is built from report sections (RoentGen: impression first, 7 chars..77 tokens)."""

    section: str = "impression"  # impression | findings | both
    fallback: bool = True  # use the other section when the chosen one is empty
    min_chars: int = 7
    max_tokens: int = 77
    tokenizer: str | None = None  # hub id or local dir for counting tokens; None: word/punct count
    no_finding_cap: float | None = None  # largest share of "No Finding" rows kept; None: no cap
    seed: int = 0  # which "No Finding" rows the cap keeps

    def __post_init__(self) -> None:
        if self.section not in ("impression", "findings", "both"):
            raise ConfigError(f"prompt.section={self.section!r}: use impression, findings or both")
        if self.no_finding_cap is not None and not 0.0 <= self.no_finding_cap <= 1.0:
            raise ConfigError(f"prompt.no_finding_cap={self.no_finding_cap}: give a share in [0, 1]")


@dataclass(frozen=True)
class ImageConfig:
    """The one pixel convention: (1, size, size) float in [low, high], shorter side resized, center crop."""

    size: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"image.size={self.size}: give a positive pixel count")
        if not self.low < self.high:
            raise ConfigError(f"image.low={self.low} must be below image.high={self.high}")


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level split shares (train, validate, test) and the seed that fixes them."""

    train: float = 0.8
    validate: float = 0.1
    test: float = 0.1
    seed: int = 0
    keep_source_split: bool = True  # use a collection's official split where it has one

    def __post_init__(self) -> None:
        shares = (self.train, self.validate, self.test)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ConfigError(f"split shares {shares} must be >= 0 and sum to 1")


@dataclass(frozen=True)
class DataConfig:
    """Everything that turns a raw collection into a manifest."""

    prompt: PromptConfig = field(default_factory=PromptConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    views: tuple[str, ...] = ()  # keep only these views (e.g. [PA, AP]); empty keeps all


# --------------------------------------------------------------------------------------------
# Denoiser config (issue 3: denoisers)
# --------------------------------------------------------------------------------------------
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' names for the target


@dataclass(frozen=True)
class DenoiserConfig:
    """A denoiser: a registry name (cxrgen.denoisers.DENOISERS) plus fields overriding its preset.

    Architecture fields left at None take the preset's value; ``resolve_config`` fills them in
    and the resolved config is what is saved beside the weights.
    """

    name: str = "uvit-tiny"  # registry key, e.g. uvit-s, uvit-m, sd15-unet, unet-tiny
    prediction_type: str = "epsilon"  # recorded for the scheduler and loss: epsilon | v_prediction | sample
    in_channels: int = 4  # latent channels C
    sample_size: int = 32  # latent side h = w (256 px / autoencoder factor 8)
    context_dim: int = 768  # text token width D_text
    context_len: int = 77  # most text tokens (U-ViT position embeddings)
    pretrained: str | None = None  # U-Net only: hub id or local dir of SD weights (subfolder "unet")
    # U-ViT (None = preset value)
    hidden_size: int | None = None  # token width D
    depth: int | None = None  # transformer blocks in all, odd: depth//2 in + 1 mid + depth//2 out
    num_heads: int | None = None
    patch_size: int | None = None
    mlp_ratio: float | None = None
    qkv_bias: bool | None = None
    time_embed: str | None = None  # identity (sinusoid is the token, as U-ViT) | mlp
    project_context: bool | None = None  # linear D_text -> D on text tokens
    final_conv: bool | None = None  # 3x3 conv after unpatchify
    # U-Net (None = preset value)
    block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    attention_head_dim: int | None = None  # diffusers' name; for SD 1.x it is the head count
    norm_num_groups: int | None = None

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"denoiser.prediction_type={self.prediction_type!r}: use one of {list(PREDICTION_TYPES)}"
            )
        for key in ("in_channels", "sample_size", "context_dim", "context_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"denoiser.{key}={getattr(self, key)}: give a positive number")


# --------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a (nested) config dataclass."""
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{type(cfg).__name__} is not a config dataclass")
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build config ``cls`` from a dict, recursing into nested configs; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[where + k for k in unknown]}; valid keys here: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot build {cls.__name__} from {data}: {exc}") from exc


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into the field's type (nested dataclass, tuple, float from int)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load config ``cls`` from a YAML file (or defaults), then apply ``a.b=v`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    cfg = from_dict(cls, data)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return ``cfg`` with each ``a.b=v`` set (v parsed as YAML), checked against field names."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: write it as key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                valid = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(
                    f"override {item!r}: no field {'.'.join(parts[: i + 1])!r}; valid here: {valid}"
                )
            if i == len(parts) - 1:
                node[part] = yaml.safe_load(raw)
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write a config as YAML (saved beside every checkpoint and prepared table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Latent autoencoder configs (issue 3: autoencoder)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoencoderConfig:
    """The latent codec: a pretrained AutoencoderKL (hub id / local dir) or the project's own 1-channel one.

    Latents are z = (posterior mean or sample - shift) * scale (LDM, Rombach et al. 2022, sec. 4.3.2);
    scale and shift are measured on data with ``cxrgen.autoencoder.measure_scale``.
    """

    pretrained: str | None = None  # hub id or local dir to start from; None: build a fresh one
    subfolder: str | None = None  # e.g. "vae" inside a Stable Diffusion repository
    vae_channels: int = 1  # image channels of the AutoencoderKL: 1 (own CXR codec) or 3 (RGB, e.g. SD)
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # downsampling f = 2 ** (len - 1)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    scale: float | None = None  # None: the AutoencoderKL config's scaling_factor (1 for a fresh one)
    shift: float | None = None  # None: the AutoencoderKL config's shift_factor (0 when it has none)

    def __post_init__(self) -> None:
        if self.vae_channels not in (1, 3):
            raise ConfigError(f"autoencoder.vae_channels={self.vae_channels}: use 1 (grayscale) or 3 (RGB)")
        if not self.block_out_channels or min(self.block_out_channels) <= 0:
            raise ConfigError(f"autoencoder.block_out_channels={self.block_out_channels}: give positive widths")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"autoencoder.block_out_channels={self.block_out_channels} must all be divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"autoencoder.scale={self.scale}: give a positive factor (1 / latent std)")


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """One training run of the 1-channel autoencoder: data, pixels, model, loss weights, optimizer."""

    manifests: tuple[str, ...] = ()  # manifest files (parquet/CSV) with image_path and split columns
    image_globs: tuple[str, ...] = ()  # or glob patterns of image files, held out by holdout_fraction
    image_root: str | None = None  # relative image paths join this; None: the manifest's folder
    out_dir: str = "runs/autoencoder"
    image: ImageConfig = field(default_factory=ImageConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    steps: int = 20000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    l1_weight: float = 1.0
    ssim_weight: float = 0.5  # weight of the structural term (1 - SSIM)
    kl_weight: float = 1e-6  # KL(q(z|x) || N(0, I)) per latent element; small, as in LDM's KL-f8
    use_discriminator: bool = False  # PatchGAN hinge loss (Isola et al. 2017; Esser et al. 2021)
    disc_start: int = 10000  # step from which the adversarial term is on
    disc_weight: float = 0.1
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3
    holdout_fraction: float = 0.1  # share of image_globs files kept for evaluation
    eval_split: str = "validate"  # manifest split used for evaluation
    eval_max_images: int = 256
    scale_max_images: int = 512  # training images encoded to measure the latent scale and shift
    intensity_jitter: float = 0.0  # largest random gain/offset on [0, 1]-mapped pixels; never a flip
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError(f"steps={self.steps}, batch_size={self.batch_size}: give positive numbers")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction={self.holdout_fraction}: give a share in (0, 1)")
        if min(self.l1_weight, self.ssim_weight, self.kl_weight, self.disc_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if not 0.0 <= self.intensity_jitter < 0.5:
            raise ConfigError(f"intensity_jitter={self.intensity_jitter}: give a value in [0, 0.5)")


# --------------------------------------------------------------------------------------------
# Text encoder config (issue 3: text encoders)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder turns prompts into context tokens, and how (see cxrgen.text)."""

    backend: str = "clip"  # clip | bert | biomedclip | minilm | scratch
    name_or_path: str | None = None  # hub id or local dir; None: the back-end's default
    subfolder: str | None = None  # model folder inside name_or_path (SD layout: "text_encoder")
    tokenizer_subfolder: str | None = None  # None: same as subfolder (SD layout: "tokenizer")
    max_length: int = 77  # token limit (CLIP / RoentGen: 77); longer prompts are truncated
    pad_to_max_length: bool = True  # fixed (B, max_length) context; False: pad to the longest
    trainable: bool = False  # False: frozen (no grad, eval mode)
    null_prompt: str = ""  # the unconditional prompt for classifier-free guidance
    trust_remote_code: bool = False  # needed by some hub models (e.g. CXR-BERT-specialized)
    # scratch back-end only: a small pre-norm transformer trained with the denoiser
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_std: float = 0.02  # std of the normal init of embeddings and linear weights
    seed: int = 0  # seeds the init generator when none is passed to build_text_encoder

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"text.max_length={self.max_length}: give at least 2 (start + end tokens)")
        if min(self.width, self.depth, self.heads) <= 0:
            raise ConfigError("text.width, text.depth and text.heads must be positive")
        if self.width % self.heads:
            raise ConfigError(f"text.width={self.width} must be divisible by text.heads={self.heads}")
        if self.mlp_ratio <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("text.mlp_ratio must be > 0 and text.dropout in [0, 1)")


# --------------------------------------------------------------------------------------------
# Phantom config (issue 5: procedural phantom)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomConfig:
    """Procedural CXR phantoms with known findings (cxrgen.phantom): how often each finding is drawn."""

    size: int = 64  # image side in pixels
    normal_fraction: float = 0.2  # share of studies with no finding at all
    effusion_prob: float = 0.45  # chance of an effusion (split evenly: right, left, bilateral)
    pneumothorax_prob: float = 0.3  # chance of a pneumothorax (split evenly: right, left)
    consolidation_prob: float = 0.4  # chance of a focal consolidation (split evenly over 4 lobes)
    cardiomegaly_prob: float = 0.35  # chance of an enlarged heart among non-normal studies
    anatomy_jitter: float = 1.0  # scales every random anatomy variation (0: canonical anatomy)
    noise_std: tuple[float, float] = (0.004, 0.015)  # per-pixel Gaussian noise std, drawn per image
    negation_prob: float = 0.5  # chance a report states each absent finding as a negation

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"phantom.size={self.size}: give at least 16 pixels")
        for key in ("normal_fraction", "effusion_prob", "pneumothorax_prob", "consolidation_prob",
                    "cardiomegaly_prob", "negation_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"phantom.{key}={getattr(self, key)}: give a probability in [0, 1]")
        if not 0.0 <= self.anatomy_jitter <= 2.0:
            raise ConfigError(f"phantom.anatomy_jitter={self.anatomy_jitter}: give a value in [0, 2]")
        if len(self.noise_std) != 2 or not 0.0 <= self.noise_std[0] <= self.noise_std[1]:
            raise ConfigError(f"phantom.noise_std={self.noise_std}: give (low, high) with 0 <= low <= high")


# --------------------------------------------------------------------------------------------
# The whole model (issue 3: parts together)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """A report-to-CXR latent diffusion model: text encoder, latent autoencoder and denoiser."""

    image_size: int = 256  # pixels per side of generated images
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
