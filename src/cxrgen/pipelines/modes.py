"""Any-to-any modes: which of {frontal, lateral, report} are given and which are generated.

A mode is written ``given->generated`` with ``+`` between modalities, e.g. ``frontal+report->lateral``;
an empty given side (``->frontal+lateral``) is unconditional joint generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cxrgen.denoisers.joint_uvit import MODALITIES, check_modalities
from cxrgen.errors import ConfigError


@dataclass(frozen=True)
class Mode:
    """Given and generated modalities (disjoint, canonical order); the others are absent."""

    given: tuple[str, ...]
    generated: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Mode:
        """``"frontal+report->lateral"`` -> Mode(("frontal", "report"), ("lateral",))."""
        if text.count("->") != 1:
            raise ConfigError(f"mode {text!r}: write it as given->generated, e.g. 'frontal->lateral+report'")
        left, right = (side.strip() for side in text.split("->"))
        return cls.of([s for s in left.split("+") if s], [s for s in right.split("+") if s])

    @classmethod
    def of(cls, given: Iterable[str], generated: Iterable[str]) -> Mode:
        """A checked mode from two name lists."""
        given, generated = check_modalities(list(given)), check_modalities(list(generated))
        if not generated:
            raise ConfigError("nothing to generate: name at least one of frontal, lateral, report")
        both = sorted(set(given) & set(generated))
        if both:
            raise ConfigError(f"{both} both given and asked for: a given modality is kept, not generated")
        return cls(given, generated)

    @property
    def name(self) -> str:
        """The mode as text, e.g. ``frontal->lateral``."""
        return f"{'+'.join(self.given)}->{'+'.join(self.generated)}"

    def absent(self, modalities: Sequence[str] = MODALITIES) -> tuple[str, ...]:
        """Modalities of the model that are neither given nor generated (held at pure noise, t = T)."""
        return tuple(m for m in modalities if m not in self.given and m not in self.generated)


#: The modes CoDi XR publishes (arXiv 2505.01091); a joint model trained here serves all of them.
ISSUE_MODES: tuple[str, ...] = (
    "report->frontal", "report->lateral", "report->frontal+lateral", "frontal->lateral", "lateral->frontal",
    "frontal->report", "frontal+lateral->report", "frontal+report->lateral",
)


def all_modes(modalities: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """Every mode over ``modalities``: any given subset, a non-empty generated subset of the rest.

    A joint model trained with given and absent shares above zero serves all of them (one network).
    """
    names = check_modalities(modalities)
    modes = []
    for code in range(3 ** len(names)):  # each modality given (0), generated (1) or absent (2)
        roles = [(code // 3 ** i) % 3 for i in range(len(names))]
        if 1 in roles:
            modes.append(Mode(tuple(n for n, r in zip(names, roles, strict=True) if r == 0),
                              tuple(n for n, r in zip(names, roles, strict=True) if r == 1)).name)
    return tuple(sorted(modes))


def check_mode(mode: Mode, trained: Sequence[str], modalities: Sequence[str]) -> Mode:
    """``mode`` if the model was trained for it, else ConfigError listing the modes it serves."""
    missing = [m for m in (*mode.given, *mode.generated) if m not in modalities]
    if missing:
        raise ConfigError(f"mode {mode.name!r} needs {missing}, which this model does not have "
                          f"(its modalities: {list(modalities)})")
    if mode.name not in trained:
        raise ConfigError(f"mode {mode.name!r} was not trained for this model; it serves {list(trained)}")
    return mode
