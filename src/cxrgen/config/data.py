"""Configs of the data layer: prompts, pixel convention, patient splits."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrgen.errors import ConfigError


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
