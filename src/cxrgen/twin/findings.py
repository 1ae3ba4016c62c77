"""Findings of one twin case (by the PATIENT's side, size and lobe) and how a mix of them is drawn.

Combinations the measurer cannot read apart are never drawn (:func:`sample_twin_findings`): a
pneumothorax and an effusion on the same side, or a consolidation on the side of either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxrgen.errors import ConfigError

TWIN_FINDINGS: tuple[str, ...] = ("effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule")
EFFUSION_SIDES: tuple[str, ...] = ("none", "right", "left", "bilateral")
SIZES: tuple[str, ...] = ("none", "small", "moderate", "large")
PNEUMOTHORAX_SIDES: tuple[str, ...] = ("none", "right", "left")
PNEUMOTHORAX_SIZES: tuple[str, ...] = ("none", "small", "large")
LOBES: tuple[str, ...] = ("none", "right_upper", "right_middle", "right_lower", "left_upper", "left_lower")

#: Fluid level (fraction of that lung's height, medially; the meniscus rises laterally and posteriorly).
EFFUSION_LEVELS: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "moderate": (0.26, 0.32),
                                                   "large": (0.44, 0.52)}
#: Lung shrink factor about its lower medial point (1 = no pneumothorax).
PNEUMOTHORAX_SHRINK: dict[str, tuple[float, float]] = {"small": (0.80, 0.86), "large": (0.55, 0.65)}
#: In-plane heart scale: normal and enlarged; a heart scale outside HEART_SCALE_LIMITS is refused.
HEART_NORMAL: tuple[float, float] = (1.0, 1.06)
HEART_ENLARGED: tuple[float, float] = (1.22, 1.36)
HEART_SCALE_LIMITS: tuple[float, float] = (0.8, 1.6)
CONSOLIDATION_FILL: tuple[float, float] = (0.65, 0.9)  # share of the lobe turned to air-space density
NODULE_MM: tuple[float, float] = (8.0, 40.0)  # diameters drawn; >= 30 mm is reported as a mass
NODULE_LIMITS: tuple[float, float] = (3.0, 60.0)


def lobe_side(lobe: str) -> str:
    return lobe.split("_")[0] if lobe != "none" else "none"


@dataclass(frozen=True)
class TwinFindings:
    """Ground truth of one twin case; sizes both as words and as the drawn numbers."""

    effusion_side: str = "none"
    effusion_size: str = "none"
    effusion_level: float = 0.0  # fluid level, fraction of the lung height
    pneumothorax_side: str = "none"
    pneumothorax_size: str = "none"
    pneumothorax_shrink: float = 1.0  # lung shrink factor
    consolidation_lobe: str = "none"
    consolidation_fill: float = 0.0
    cardiomegaly: bool = False
    heart_scale: float = 1.0
    nodule_lobe: str = "none"
    nodule_mm: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in (("effusion_side", EFFUSION_SIDES), ("effusion_size", SIZES),
                              ("pneumothorax_side", PNEUMOTHORAX_SIDES), ("pneumothorax_size", PNEUMOTHORAX_SIZES),
                              ("consolidation_lobe", LOBES), ("nodule_lobe", LOBES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"twin finding {name}={getattr(self, name)!r}: use one of {list(allowed)}")
        for side, size in (("effusion_side", "effusion_size"), ("pneumothorax_side", "pneumothorax_size")):
            if (getattr(self, side) == "none") != (getattr(self, size) == "none"):
                raise ConfigError(f"twin finding {side}={getattr(self, side)!r} with {size}="
                                  f"{getattr(self, size)!r}: give both or neither")
        lo, hi = HEART_SCALE_LIMITS
        if not lo <= self.heart_scale <= hi:
            raise ConfigError(f"twin finding heart_scale={self.heart_scale}: give a value in [{lo}, {hi}]")
        if self.nodule_lobe != "none" and not NODULE_LIMITS[0] <= self.nodule_mm <= NODULE_LIMITS[1]:
            raise ConfigError(f"twin finding nodule_mm={self.nodule_mm}: give a diameter in {list(NODULE_LIMITS)} mm")
        if not 0.0 <= self.effusion_level <= 0.8:
            raise ConfigError(f"twin finding effusion_level={self.effusion_level}: give a fraction in [0, 0.8]")
        if not 0.3 <= self.pneumothorax_shrink <= 1.0:
            raise ConfigError(f"twin finding pneumothorax_shrink={self.pneumothorax_shrink}: give a value in [0.3, 1]")
        if not 0.0 <= self.consolidation_fill <= 1.0:
            raise ConfigError(f"twin finding consolidation_fill={self.consolidation_fill}: give a fraction in [0, 1]")

    @property
    def present(self) -> set[str]:
        out = {"effusion"} if self.effusion_side != "none" else set()
        out |= {"pneumothorax"} if self.pneumothorax_side != "none" else set()
        out |= {"consolidation"} if self.consolidation_lobe != "none" else set()
        out |= {"cardiomegaly"} if self.cardiomegaly else set()
        out |= {"nodule"} if self.nodule_lobe != "none" else set()
        return out

    def to_row(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TwinFindings:
        kwargs = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        for k in ("effusion_level", "pneumothorax_shrink", "consolidation_fill", "heart_scale", "nodule_mm"):
            if k in kwargs:
                kwargs[k] = float(kwargs[k])
        if "cardiomegaly" in kwargs:
            kwargs["cardiomegaly"] = str(kwargs["cardiomegaly"]).lower() in ("true", "1", "1.0")
        return cls(**kwargs)


def make_findings(rng: np.random.Generator, effusion: tuple[str, str] = ("none", "none"),
                  pneumothorax: tuple[str, str] = ("none", "none"), consolidation: str = "none",
                  cardiomegaly: bool = False, nodule: str = "none") -> TwinFindings:
    """Findings with the given sides, sizes and lobes; their numbers drawn from ``rng``."""
    u = lambda r: float(rng.uniform(*r))  # noqa: E731
    for name, value, allowed in (("effusion size", effusion[1], SIZES),
                                 ("pneumothorax size", pneumothorax[1], PNEUMOTHORAX_SIZES)):
        if value not in allowed:
            raise ConfigError(f"twin {name} {value!r}: use one of {list(allowed)}")
    return TwinFindings(
        effusion_side=effusion[0], effusion_size=effusion[1],
        effusion_level=u(EFFUSION_LEVELS[effusion[1]]) if effusion[1] != "none" else 0.0,
        pneumothorax_side=pneumothorax[0], pneumothorax_size=pneumothorax[1],
        pneumothorax_shrink=u(PNEUMOTHORAX_SHRINK[pneumothorax[1]]) if pneumothorax[1] != "none" else 1.0,
        consolidation_lobe=consolidation, consolidation_fill=u(CONSOLIDATION_FILL) if consolidation != "none" else 0.0,
        cardiomegaly=cardiomegaly, heart_scale=u(HEART_ENLARGED if cardiomegaly else HEART_NORMAL),
        nodule_lobe=nodule, nodule_mm=u(NODULE_MM) if nodule != "none" else 0.0)


@dataclass(frozen=True)
class TwinMix:
    """How often each finding is drawn (sides, sizes and lobes uniformly among those allowed)."""

    normal_fraction: float = 0.2  # cases with no finding at all
    effusion: float = 0.45
    pneumothorax: float = 0.3
    consolidation: float = 0.4
    cardiomegaly: float = 0.35
    nodule: float = 0.2

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"twin mix {name}={value}: give a probability in [0, 1]")


def sample_twin_findings(rng: np.random.Generator, mix: TwinMix | None = None) -> TwinFindings:
    """Draw one case's findings from ``mix``, never a combination the measurers cannot read apart."""
    mix = mix or TwinMix()
    if rng.uniform() < mix.normal_fraction:
        return make_findings(rng)
    effusion = ("none", "none")
    if rng.uniform() < mix.effusion:
        effusion = (str(rng.choice(EFFUSION_SIDES[1:])), str(rng.choice(SIZES[1:])))
    taken = {"right", "left"} if effusion[0] == "bilateral" else {effusion[0]}
    pneumothorax = ("none", "none")
    free = [s for s in ("right", "left") if s not in taken]
    if free and rng.uniform() < mix.pneumothorax:
        pneumothorax = (str(rng.choice(free)), str(rng.choice(PNEUMOTHORAX_SIZES[1:])))
        taken.add(pneumothorax[0])
    lobes = [lobe for lobe in LOBES[1:] if lobe_side(lobe) not in taken]
    consolidation = str(rng.choice(lobes)) if lobes and rng.uniform() < mix.consolidation else "none"
    cardiomegaly = bool(rng.uniform() < mix.cardiomegaly)
    nodule_lobes = [lobe for lobe in LOBES[1:] if lobe != consolidation]
    nodule = str(rng.choice(nodule_lobes)) if rng.uniform() < mix.nodule else "none"
    return make_findings(rng, effusion, pneumothorax, consolidation, cardiomegaly, nodule)
