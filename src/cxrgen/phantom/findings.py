"""The findings a phantom can show, and how a balanced mix of them is drawn.

Sides are always the PATIENT's sides (radiological convention: the patient's right lies on the
image's left). A finding combination the measurer cannot read apart (e.g. a pneumothorax and an
effusion on the same side) is a *conflict*: :func:`sample_findings` never draws one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrgen.config import PhantomConfig
from cxrgen.errors import ConfigError

SIDES: tuple[str, ...] = ("right", "left")  # patient's sides
#: The kinds of finding a phantom can show.
FINDINGS: tuple[str, ...] = ("effusion", "pneumothorax", "consolidation", "cardiomegaly")
EFFUSION_SIDES: tuple[str, ...] = ("none", "right", "left", "bilateral")
EFFUSION_SIZES: tuple[str, ...] = ("none", "small", "moderate", "large")
PNEUMOTHORAX_SIDES: tuple[str, ...] = ("none", "right", "left")
PNEUMOTHORAX_EXTENTS: tuple[str, ...] = ("none", "apical", "large")
LOBES: tuple[str, ...] = ("none", "right_upper", "right_lower", "left_upper", "left_lower")

#: Fluid height (fraction of the lung height, at the lateral chest wall) drawn per effusion size.
EFFUSION_HEIGHTS: dict[str, tuple[float, float]] = {
    "small": (0.17, 0.22), "moderate": (0.32, 0.38), "large": (0.52, 0.58),
}
#: Cardiothoracic ratio ranges: normal heart and cardiomegaly; the cut between them.
CTR_NORMAL: tuple[float, float] = (0.42, 0.48)
CTR_ENLARGED: tuple[float, float] = (0.58, 0.65)
CTR_CUT: float = 0.53


@dataclass(frozen=True)
class PhantomFindings:
    """Ground truth of one phantom: every finding by patient side, size or lobe; CTR as a number."""

    effusion_side: str = "none"  # none | right | left | bilateral
    effusion_size: str = "none"  # none | small | moderate | large
    pneumothorax_side: str = "none"  # none | right | left
    pneumothorax_extent: str = "none"  # none | apical | large
    ctr: float = 0.45  # cardiothoracic ratio: heart width / inner thoracic width
    consolidation_lobe: str = "none"  # none | right_upper | right_lower | left_upper | left_lower

    def __post_init__(self) -> None:
        for name, allowed in (("effusion_side", EFFUSION_SIDES), ("effusion_size", EFFUSION_SIZES),
                              ("pneumothorax_side", PNEUMOTHORAX_SIDES),
                              ("pneumothorax_extent", PNEUMOTHORAX_EXTENTS),
                              ("consolidation_lobe", LOBES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use one of {list(allowed)}")
        if (self.effusion_side == "none") != (self.effusion_size == "none"):
            raise ConfigError(f"effusion side {self.effusion_side!r} and size {self.effusion_size!r}: "
                              "give both or neither")
        if (self.pneumothorax_side == "none") != (self.pneumothorax_extent == "none"):
            raise ConfigError(f"pneumothorax side {self.pneumothorax_side!r} and extent "
                              f"{self.pneumothorax_extent!r}: give both or neither")
        if not 0.2 <= self.ctr <= 0.8:
            raise ConfigError(f"ctr={self.ctr}: give a cardiothoracic ratio in [0.2, 0.8]")

    @property
    def cardiomegaly(self) -> bool:
        """True when the cardiothoracic ratio is above the cut (0.53)."""
        return self.ctr > CTR_CUT

    @property
    def effusion_sides(self) -> tuple[str, ...]:
        """Patient sides with pleural fluid."""
        return SIDES if self.effusion_side == "bilateral" else tuple(
            s for s in SIDES if s == self.effusion_side)

    @property
    def consolidation_side(self) -> str:
        """Patient side of the consolidated lobe, or "none"."""
        return self.consolidation_lobe.split("_")[0]

    @property
    def is_normal(self) -> bool:
        """No finding at all (normal heart size included)."""
        return (self.effusion_side == "none" and self.pneumothorax_side == "none"
                and self.consolidation_lobe == "none" and not self.cardiomegaly)

    @property
    def present(self) -> frozenset[str]:
        """The FINDINGS this study shows (empty for a normal study)."""
        shown = (self.effusion_side != "none", self.pneumothorax_side != "none",
                 self.consolidation_lobe != "none", self.cardiomegaly)
        return frozenset(name for name, on in zip(FINDINGS, shown, strict=True) if on)

    @property
    def n_findings(self) -> int:
        """How many findings the study has (effusion, pneumothorax, consolidation, cardiomegaly)."""
        return len(self.present)

    def conflicts(self) -> list[str]:
        """Reasons this combination cannot be read back reliably from pixels (empty when fine)."""
        out = []
        if self.pneumothorax_side in self.effusion_sides:
            out.append("pneumothorax and effusion on the same side")
        if self.consolidation_side == self.pneumothorax_side != "none":
            out.append("consolidation and pneumothorax on the same side")
        if (self.consolidation_lobe.endswith("lower") and self.consolidation_side in self.effusion_sides
                and self.effusion_size in ("moderate", "large")):
            out.append("lower-lobe consolidation hidden by a moderate or large effusion")
        return out

    def to_row(self) -> dict[str, object]:
        """Ground-truth columns for a manifest (``cardiomegaly`` included)."""
        return {"effusion_side": self.effusion_side, "effusion_size": self.effusion_size,
                "pneumothorax_side": self.pneumothorax_side,
                "pneumothorax_extent": self.pneumothorax_extent, "ctr": round(self.ctr, 4),
                "cardiomegaly": self.cardiomegaly, "consolidation_lobe": self.consolidation_lobe}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PhantomFindings:
        """The findings of a manifest row written with :meth:`to_row` (other columns are ignored)."""
        return cls(effusion_side=str(row["effusion_side"]), effusion_size=str(row["effusion_size"]),
                   pneumothorax_side=str(row["pneumothorax_side"]),
                   pneumothorax_extent=str(row["pneumothorax_extent"]), ctr=float(row["ctr"]),
                   consolidation_lobe=str(row["consolidation_lobe"]))


def _choice(rng: np.random.Generator, options: tuple[str, ...], probs: tuple[float, ...]) -> str:
    p = np.asarray(probs, dtype=float)
    return str(options[int(rng.choice(len(options), p=p / p.sum()))])


def sample_ctr(rng: np.random.Generator, enlarged: bool) -> float:
    """A cardiothoracic ratio drawn uniformly from the normal or the enlarged range."""
    low, high = CTR_ENLARGED if enlarged else CTR_NORMAL
    return float(rng.uniform(low, high))


def sample_findings(rng: np.random.Generator, cfg: PhantomConfig | None = None) -> PhantomFindings:
    """Draw a balanced mix: ``cfg.normal_fraction`` normals, else findings drawn independently.

    Combinations with :meth:`PhantomFindings.conflicts`, or with more than ``cfg.max_findings``
    findings, are redrawn.
    """
    cfg = cfg or PhantomConfig()
    if rng.uniform() < cfg.normal_fraction:
        return PhantomFindings(ctr=sample_ctr(rng, enlarged=False))
    while True:
        eff_side = _choice(rng, EFFUSION_SIDES, (1.0 - cfg.effusion_prob,) + (cfg.effusion_prob / 3,) * 3)
        eff_size = "none" if eff_side == "none" else _choice(rng, EFFUSION_SIZES[1:], (1, 1, 1))
        ptx_side = _choice(rng, PNEUMOTHORAX_SIDES, (1.0 - cfg.pneumothorax_prob,) + (cfg.pneumothorax_prob / 2,) * 2)
        ptx_extent = "none" if ptx_side == "none" else _choice(rng, PNEUMOTHORAX_EXTENTS[1:], (1, 1))
        lobe = _choice(rng, LOBES, (1.0 - cfg.consolidation_prob,) + (cfg.consolidation_prob / 4,) * 4)
        ctr = sample_ctr(rng, enlarged=bool(rng.uniform() < cfg.cardiomegaly_prob))
        findings = PhantomFindings(eff_side, eff_size, ptx_side, ptx_extent, ctr, lobe)
        too_many = cfg.max_findings is not None and findings.n_findings > cfg.max_findings
        if not findings.conflicts() and not too_many:
            return findings
