"""Findings edited into the CT in Hounsfield units, using the label map to know where each belongs.

The patient is taken as upright (as for a PA radiograph): fluid is dependent (inferior), with a
meniscus that rises towards the lateral and posterior chest wall.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.twin.findings import TwinFindings
from cxrgen.twin.volume import LOBE_LABELS, CTSource, TwinVolume, load_volume

FLUID_HU, CONSOLIDATION_HU, HEART_HU, NODULE_HU, AIR_HU = 10.0, 25.0, 40.0, 45.0, -1000.0
BONE_HU = 200.0  # voxels above this are never overwritten by soft tissue
HEART_ZONE_SCALE = 1.4  # lung findings stop at the border of the heart enlarged this much


@dataclass(frozen=True, eq=False)
class Anatomy:
    """A working-grid CT and the voxel indices of the structures the edits use (built once, cached)."""

    vol: TwinVolume
    hu: np.ndarray  # (X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) uint8
    lobes: dict[str, np.ndarray]  # lobe name -> (N, 3) voxel indices
    heart: np.ndarray  # (N, 3)
    heart_zone: tuple[np.ndarray, ...] = ()  # voxels of the largest heart (HEART_ZONE_SCALE): lung edits spare them

    def side(self, side: str) -> np.ndarray:
        """Voxel indices of one lung (all its lobes)."""
        return np.concatenate([v for k, v in self.lobes.items() if k.startswith(side)])

    def mm(self, idx: np.ndarray) -> np.ndarray:
        """Positions in mm (x left, y anterior, z up) of (N, 3) voxel indices."""
        return (idx - np.asarray(self.vol.centre, dtype=np.float32)) * self.vol.voxel_mm

    def lobe_ids(self, side: str) -> list[int]:
        return [self.vol.ids[v] for k, v in LOBE_LABELS.items() if k.startswith(side)]


@functools.lru_cache(maxsize=4)
def load_anatomy(source: CTSource | None = None, voxel_mm: float = 2.5) -> Anatomy:
    """The CT on a ``voxel_mm`` grid with its lobes and heart as index lists (cached per grid)."""
    vol = load_volume(source, voxel_mm)
    label = vol.labels.numpy()
    lobes = {k: np.argwhere(label == vol.ids[v]) for k, v in LOBE_LABELS.items()}
    anat = Anatomy(vol=vol, hu=vol.hu.numpy(), label=label, lobes=lobes, heart=np.argwhere(label == vol.ids["heart"]))
    zone = tuple(enlarge_heart(anat.hu.copy(), anat, HEART_ZONE_SCALE).T)
    return Anatomy(vol=vol, hu=anat.hu, label=label, lobes=lobes, heart=anat.heart, heart_zone=zone)


def _set(hu: np.ndarray, idx: np.ndarray, value: float, keep_bone: bool = True) -> None:
    sel = tuple(idx.T)
    hu[sel] = np.where(hu[sel] > BONE_HU, hu[sel], value) if keep_bone else value


def add_effusion(hu: np.ndarray, anat: Anatomy, side: str, level: float) -> None:
    """Fill the dependent part of one pleural space with fluid up to ``level`` of the lung height."""
    idx = anat.side(side)
    p = anat.mm(idx)
    z0, height = p[:, 2].min(), np.ptp(p[:, 2])
    x_med, x_lat = (p[:, 0].max(), p[:, 0].min()) if side == "right" else (p[:, 0].min(), p[:, 0].max())
    q_lat = np.clip((p[:, 0] - x_med) / (x_lat - x_med), 0, 1)
    q_post = np.clip((p[:, 1].max() - p[:, 1]) / np.ptp(p[:, 1]), 0, 1)
    fluid = p[:, 2] < z0 + height * (level + 0.08 * q_lat ** 2 + 0.05 * q_post)  # meniscus
    _set(hu, idx[fluid], FLUID_HU, keep_bone=False)


def add_pneumothorax(hu: np.ndarray, anat: Anatomy, side: str, shrink: float) -> None:
    """Retract one lung towards its lower medial point by ``shrink``; the freed rim becomes air."""
    idx = anat.side(side)
    lo, hi = idx.min(0), idx.max(0)
    medial = hi[0] if side == "right" else lo[0]
    anchor = np.array([medial + 0.3 * ((lo[0] if side == "right" else hi[0]) - medial),
                       (lo[1] + hi[1]) / 2, lo[2] + 0.25 * (hi[2] - lo[2])])
    src = np.rint(anchor + (idx - anchor) / shrink).astype(int)
    inside = np.all((src >= 0) & (src < np.array(anat.label.shape)), axis=1)
    lung = np.zeros(len(idx), dtype=bool)
    lung[inside] = np.isin(anat.label[tuple(src[inside].T)], anat.lobe_ids(side))
    _set(hu, idx[~lung], AIR_HU, keep_bone=False)
    kept = tuple(idx[lung].T)
    hu[kept] = np.minimum(-1000.0 + (hu[kept] + 1000.0) / shrink ** 2, -100.0)  # the collapsed lung is denser


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: int = 5) -> np.ndarray:
    coarse = torch.from_numpy(rng.random(tuple(max(2, s // cell) for s in shape)).astype(np.float32))
    return F.interpolate(coarse[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


def add_consolidation(hu: np.ndarray, anat: Anatomy, lobe: str, fill: float, rng: np.random.Generator) -> None:
    """Patchy air-space density over ``fill`` of one lobe's voxels."""
    idx = anat.lobes[lobe]
    lo, hi = idx.min(0), idx.max(0) + 1
    noise = _smooth_noise(rng, tuple(int(s) for s in hi - lo))[tuple((idx - lo).T)]
    patch = noise >= np.quantile(noise, 1.0 - fill)
    _set(hu, idx[patch], CONSOLIDATION_HU)


def add_consolidation_full(hu: np.ndarray, anat: Anatomy, lobe: str) -> None:
    """Air-space density over the whole lobe (the measurer's canonical consolidation)."""
    _set(hu, anat.lobes[lobe], CONSOLIDATION_HU)


def enlarge_heart(hu: np.ndarray, anat: Anatomy, scale: float) -> np.ndarray:
    """Scale the heart about its centroid (``scale`` in-plane, less in height); return its new voxels."""
    heart = anat.heart
    if scale <= 1.0:
        return heart
    c = heart.mean(0)
    factors = np.array([scale, scale, 1.0 + 0.5 * (scale - 1.0)])
    lo = np.maximum(np.floor(c - (c - heart.min(0)) * factors) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(c + (heart.max(0) - c) * factors) + 2, anat.label.shape).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(c + (grid - c) / factors).astype(int)
    src = np.clip(src, 0, np.array(anat.label.shape) - 1)
    new = grid[anat.label[tuple(src.T)] == anat.vol.ids["heart"]]
    _set(hu, new, HEART_HU)
    return np.concatenate([heart, new])


def add_nodule(hu: np.ndarray, anat: Anatomy, lobe: str, diameter_mm: float, rng: np.random.Generator
               ) -> np.ndarray:
    """A soft-tissue sphere of ``diameter_mm`` inside ``lobe`` (a centre where it fits, if any); its centre's
    voxel index (3,)."""
    idx = anat.lobes[lobe]
    r = diameter_mm / 2 / anat.vol.voxel_mm
    lobe_id = anat.vol.ids[LOBE_LABELS[lobe]]
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    centre = idx[len(idx) // 2]
    for cand in idx[rng.integers(0, len(idx), 64)]:
        probe = np.clip(np.rint(cand + r * dirs).astype(int), 0, np.array(anat.label.shape) - 1)
        if np.all(anat.label[tuple(probe.T)] == lobe_id):
            centre = cand
            break
    span = int(np.ceil(r))
    offs = np.stack(np.meshgrid(*[np.arange(-span, span + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offs = offs[(offs ** 2).sum(1) <= r ** 2]
    pts = np.clip(centre + offs, 0, np.array(anat.label.shape) - 1)
    _set(hu, pts, NODULE_HU)
    return np.asarray(centre)


def apply_findings(anat: Anatomy, f: TwinFindings, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A copy of the CT with ``f`` edited in, the heart's voxel indices after the edit, and the nodule's centre
    (voxel index (3,); None without a nodule), the truth of where the nodule is.

    Lung findings first, the heart last; lung findings spare the zone the heart may grow into, so
    that the change of a case is the sum of the changes of its findings (what the measurer fits)."""
    hu = anat.hu.copy()
    nodule = None
    if f.pneumothorax_side != "none":
        add_pneumothorax(hu, anat, f.pneumothorax_side, f.pneumothorax_shrink)
    if f.consolidation_lobe != "none":
        add_consolidation(hu, anat, f.consolidation_lobe, f.consolidation_fill, rng)
    if f.nodule_lobe != "none":
        nodule = add_nodule(hu, anat, f.nodule_lobe, f.nodule_mm, rng)
    sides = ("right", "left") if f.effusion_side == "bilateral" else (f.effusion_side,)
    for side in sides if f.effusion_side != "none" else ():
        add_effusion(hu, anat, side, f.effusion_level)
    hu[anat.heart_zone] = anat.hu[anat.heart_zone]  # lung findings stop at the (largest) heart's border
    return hu, enlarge_heart(hu, anat, f.heart_scale), nodule
