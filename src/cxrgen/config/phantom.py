"""Config of the procedural CXR phantom."""

from __future__ import annotations

from dataclasses import dataclass

from cxrgen.errors import ConfigError


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
    max_findings: int | None = None  # redraw studies with more findings than this; None: no limit

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"phantom.size={self.size}: give at least 16 pixels")
        for key in ("normal_fraction", "effusion_prob", "pneumothorax_prob", "consolidation_prob",
                    "cardiomegaly_prob", "negation_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"phantom.{key}={getattr(self, key)}: give a probability in [0, 1]")
        if self.max_findings is not None and self.max_findings < 1:
            raise ConfigError(f"phantom.max_findings={self.max_findings}: give at least 1, or null for no limit")
        if not 0.0 <= self.anatomy_jitter <= 2.0:
            raise ConfigError(f"phantom.anatomy_jitter={self.anatomy_jitter}: give a value in [0, 2]")
        if len(self.noise_std) != 2 or not 0.0 <= self.noise_std[0] <= self.noise_std[1]:
            raise ConfigError(f"phantom.noise_std={self.noise_std}: give (low, high) with 0 <= low <= high")
