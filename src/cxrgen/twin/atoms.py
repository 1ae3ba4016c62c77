"""The measurer's dictionary: how each canonical finding changes each view of the twin.

Every atom is the projection of (attenuation after one edit - attenuation before), rendered at the
nominal geometry: an effusion at a fluid level, a pneumothorax at a shrink factor, a fully
consolidated lobe, an enlarged heart. A case's difference image is (nearly) a sum of such atoms with
amplitudes near 1 (the consolidated share for a lobe), so the measurer fits atoms to it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from cxrgen.twin.case import cardiothoracic_ratio, view_window, voxel_for
from cxrgen.twin.edits import add_consolidation_full, add_effusion, add_pneumothorax, enlarge_heart, load_anatomy
from cxrgen.twin.render import VIEWS, Variation, attenuation, project
from cxrgen.twin.volume import LOBE_LABELS, CTSource

EFFUSION_GRID: tuple[float, ...] = (0.06, 0.09, 0.12, 0.15, 0.18, 0.21, 0.24, 0.27, 0.30, 0.33, 0.36, 0.40,
                                    0.44, 0.48, 0.52, 0.56)
PNEUMOTHORAX_GRID: tuple[float, ...] = (0.85, 0.78, 0.7, 0.6)
HEART_GRID: tuple[float, ...] = (1.04, 1.1, 1.16, 1.22, 1.28, 1.34, 1.4)
CHUNK = 8  # atoms projected together


@dataclass(frozen=True)
class Atom:
    """One canonical finding: kind (effusion | pneumothorax | consolidation | heart), where, how much."""

    kind: str
    where: str  # side or lobe ("" for the heart)
    value: float  # fluid level, shrink factor, 1.0, heart scale

    @property
    def family(self) -> str:
        """Atoms of one family exclude each other (one level per effusion side, one consolidated lobe, ...)."""
        return f"{self.kind}:{self.where}" if self.kind in ("effusion", "pneumothorax") else self.kind


def atom_list() -> list[Atom]:
    atoms = [Atom("effusion", s, h) for s in ("right", "left", "bilateral") for h in EFFUSION_GRID]
    atoms += [Atom("pneumothorax", s, k) for s in ("right", "left") for k in PNEUMOTHORAX_GRID]
    atoms += [Atom("consolidation", lobe, 1.0) for lobe in LOBE_LABELS]
    atoms += [Atom("heart", "", s) for s in HEART_GRID]
    return atoms


def _edited(anat, atom: Atom) -> np.ndarray:
    """The CT after one canonical edit; lung findings spare the heart zone, as in a case."""
    hu = anat.hu.copy()
    if atom.kind == "effusion":
        for side in ("right", "left") if atom.where == "bilateral" else (atom.where,):
            add_effusion(hu, anat, side, atom.value)
    elif atom.kind == "pneumothorax":
        add_pneumothorax(hu, anat, atom.where, atom.value)
    elif atom.kind == "consolidation":
        add_consolidation_full(hu, anat, atom.where)
    else:
        enlarge_heart(hu, anat, atom.value)
        return hu
    hu[anat.heart_zone] = anat.hu[anat.heart_zone]
    return hu


@dataclass(frozen=True, eq=False)
class Dictionary:
    """Atoms and their difference images per view, in display units of the nominal window."""

    atoms: list[Atom]
    maps: dict[str, torch.Tensor]  # view -> (A, S, S)
    heart_ctr: dict[float, float]  # heart scale -> CTR at the nominal geometry (1.0 included)


@functools.lru_cache(maxsize=4)
def dictionary(size: int, source: CTSource | None = None) -> Dictionary:
    """Render every atom in both views at ``size`` (a few seconds, once per size)."""
    anat = load_anatomy(source, voxel_for(size))
    var = Variation()
    base = attenuation(torch.from_numpy(anat.hu))
    atoms = atom_list()
    out = {v: [] for v in VIEWS}
    for start in range(0, len(atoms), CHUNK):
        chunk = atoms[start:start + CHUNK]
        delta = torch.stack([attenuation(torch.from_numpy(_edited(anat, a))) - base for a in chunk])
        for v in VIEWS:
            w = view_window(v, source)
            out[v].append(project(delta, v, size, var, anat.vol.voxel_mm, anat.vol.centre) / (w.hi - w.lo))
    ctr = {1.0: cardiothoracic_ratio(anat, anat.heart, var)}
    for s in HEART_GRID:
        ctr[s] = cardiothoracic_ratio(anat, enlarge_heart(anat.hu.copy(), anat, s), var)
    return Dictionary(atoms=atoms, maps={v: torch.cat(m) for v, m in out.items()}, heart_ctr=ctr)
