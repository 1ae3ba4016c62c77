"""Read a twin case's findings back from its pixels, one view at a time.

The measurer knows the twin's anatomy and geometry but never the case's findings or variation. It
registers the finding-free template to the image on the parts no finding changes
(:mod:`cxrgen.twin.reference`), fits the exposure there, and explains the difference image
D = image - template as a sum of canonical findings (:mod:`cxrgen.twin.atoms`), chosen greedily:
the atom that lowers the squared residual most joins while the gain is clear and its amplitude is
plausible (near 1; near the consolidated share for a lobe).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import DataError
from cxrgen.twin.atoms import Atom, Dictionary, dictionary
from cxrgen.twin.findings import TwinFindings, lobe_side
from cxrgen.twin.reference import calibration_mask, reference, register, warp
from cxrgen.twin.render import check_view
from cxrgen.twin.volume import CTSource

LATERAL_ZONES = {"upper": ("right_upper", "left_upper"), "middle": ("right_middle",),
                 "lower": ("right_lower", "left_lower")}
LARGE_FLUID_LEVEL, FULL_FLUID_AMPLITUDE = 0.26, 0.8
#: Plausible amplitude of each kind of atom (1 = exactly the canonical edit).
AMPLITUDES = {"effusion": (0.55, 1.6), "pneumothorax": (0.4, 2.0), "consolidation": (0.4, 1.3), "heart": (0.5, 1.6)}


@dataclass(frozen=True)
class MeasureConfig:
    """Stopping rule of the greedy fit and the size cuts (fluid level, fraction of the lung height)."""

    min_gain: float = 1e-4  # mean squared residual an atom must remove (per region pixel) to join
    min_gain_heart: float = 1e-5
    max_atoms: int = 4
    size_cuts: tuple[float, float] = (0.21, 0.38)  # small | moderate | large fluid levels
    heart_cut_scale: float = 1.14  # PA: heart scale between the normal and the enlarged ranges
    lateral_heart_cut_scale: float = 1.14  # lateral (calibrated separately: its heart fit is noisier)


@dataclass
class TwinMeasurement:
    """What one view shows; fields a view cannot read are None."""

    view: str
    effusion_side: str = "none"  # the lateral cannot tell sides: right / left / bilateral as fitted
    effusion_size: str = "none"
    pneumothorax_side: str | None = None  # PA only
    consolidation_lobe: str | None = None  # PA only
    consolidation_zone: str | None = None  # lateral: none | upper | middle | lower
    ctr: float | None = None  # PA only
    cardiomegaly: bool = False
    atoms: dict[str, float] = field(default_factory=dict)  # chosen atoms and amplitudes

    @property
    def effusion_present(self) -> bool:
        return self.effusion_side != "none"


def check_image(image: np.ndarray) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 32:
        raise DataError(f"twin measurer expects a square (S, S) image with S >= 32, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError("twin measurer got NaN or infinite pixels")
    return torch.from_numpy(arr)


@functools.lru_cache(maxsize=16)
def _masks(view: str, size: int, source: CTSource | None) -> torch.Tensor:
    """(2, S, S) float: the calibration pixels and the pixels any atom touches, at the nominal geometry."""
    calib = calibration_mask(reference(view, size, source))
    region = dictionary(size, source).maps[view].abs().amax(0) > 1e-3
    return torch.stack([calib, region]).float()


def difference(img: torch.Tensor, view: str, source: CTSource | None) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """D = exposure-normalised image minus the registered template, the registration and the warped atom region."""
    size = img.shape[-1]
    reg = register(img, view, source)
    template = warp(reference(view, size, source).template[None], *reg)[0]
    masks = warp(_masks(view, size, source), *reg) > 0.5
    m = masks[0]
    x, y = template[m], img[m]
    b = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-6)
    a = y.mean() - b * x.mean()
    d = (img - a) / b.clamp_min(0.2) - template
    return F.avg_pool2d(d[None, None], 3, 1, 1, count_include_pad=False)[0, 0], reg, masks[1]


def plausible(atom: Atom, amplitude: float) -> bool:
    """Is ``amplitude`` plausible for ``atom``? Fluid replaces all the lung below its level, so a
    moderate or large effusion fits with an amplitude near 1 (a patchy lower-lobe consolidation,
    which it can resemble, fits with about its filled share)."""
    lo, hi = AMPLITUDES[atom.kind]
    if atom.kind == "effusion" and atom.value >= LARGE_FLUID_LEVEL:
        lo = FULL_FLUID_AMPLITUDE
    return lo <= amplitude <= hi


def _allowed(atom: Atom, chosen: list[Atom]) -> bool:
    """The sampler's exclusions: one atom per family; effusion, pneumothorax and consolidation sides differ."""
    if atom.kind == "heart":
        return all(c.kind != "heart" for c in chosen)
    if any(c.family == atom.family for c in chosen):
        return False
    return not _sides(atom) & {s for c in chosen if c.kind != "heart" for s in _sides(c)}


def _sides(atom: Atom) -> set[str]:
    side = lobe_side(atom.where) if atom.kind == "consolidation" else atom.where
    return {"right", "left"} if side == "bilateral" else {side}


def _best_step(gram, rhs, yy, atoms, chosen, kinds, const):
    """The allowed atom of ``kinds`` whose joining lowers the residual most: (sse, index, amplitudes)."""
    best = None
    for k, atom in enumerate(atoms):
        if atom.kind not in kinds or k in chosen or not _allowed(atom, [atoms[c] for c in chosen]):
            continue
        idx = chosen + [k, const]
        x = torch.linalg.solve(gram[idx][:, idx], rhs[idx])
        if not plausible(atom, float(x[-2])):
            continue
        new = float(yy - rhs[idx] @ x)
        if best is None or new < best[0]:
            best = (new, k, x)
    return best


def fit_atoms(d: torch.Tensor, maps: torch.Tensor, atoms: list[Atom], cfg: MeasureConfig,
              region: torch.Tensor) -> dict[Atom, float]:
    """Greedy least squares of D on the atoms (plus a constant) over the pixels any atom touches.

    Findings join while each removes at least ``min_gain`` of mean squared residual; the heart,
    present in every chest and changing few pixels, is fitted last with its own ``min_gain_heart``.
    """
    a = torch.cat([maps[:, region], torch.ones(1, int(region.sum()))]).double()  # (K + 1, N)
    y = d[region].double()
    gram, rhs, n, yy = a @ a.T, a @ y, float(region.sum()), float(y @ y)
    const = a.shape[0] - 1
    chosen: list[int] = []
    sse = yy - float(rhs[const] ** 2 / gram[const, const])
    for kinds, gain, rounds in (({"effusion", "pneumothorax", "consolidation"}, cfg.min_gain, cfg.max_atoms),
                                ({"heart"}, cfg.min_gain_heart, 1)):
        for _ in range(rounds):
            best = _best_step(gram, rhs, yy, atoms, chosen, kinds, const)
            if best is None or (sse - best[0]) / n < gain:
                break
            sse, chosen = best[0], chosen + [best[1]]
            chosen, sse = _swap(gram, rhs, yy, atoms, chosen, const, sse)
            chosen, sse = _split_bilateral(gram, rhs, yy, atoms, chosen, const, sse)
    if not chosen:
        return {}
    x = torch.linalg.solve(gram[chosen + [const]][:, chosen + [const]], rhs[chosen + [const]])
    return {atoms[c]: float(x[i]) for i, c in enumerate(chosen)}


def _split_bilateral(gram, rhs, yy, atoms, chosen, const, sse):
    """Replace a bilateral effusion by a one-sided effusion plus a consolidation on the other side when
    that fits better (the lateral view overlays both lungs, so one greedy step cannot tell them apart)."""
    pos = next((i for i, c in enumerate(chosen) if atoms[c].kind == "effusion" and atoms[c].where == "bilateral"), None)
    if pos is None:
        return chosen, sse
    rest = chosen[:pos] + chosen[pos + 1:]
    for e, eff in enumerate(atoms):
        if eff.kind != "effusion" or eff.where == "bilateral" or not _allowed(eff, [atoms[c] for c in rest]):
            continue
        best = _best_step(gram, rhs, yy, atoms, rest + [e], {"consolidation"}, const)
        if best is not None and best[0] < sse - 1e-9:
            if plausible(eff, float(best[2][-3])):
                sse, chosen = best[0], rest + [e, best[1]]
    return chosen, sse


def _swap(gram, rhs, yy, atoms, chosen, const, sse):
    """One pass of local search: replace each chosen atom by another of any finding if the residual drops."""
    for pos in range(len(chosen)):
        rest = chosen[:pos] + chosen[pos + 1:]
        kinds = {"heart"} if atoms[chosen[pos]].kind == "heart" else {"effusion", "pneumothorax", "consolidation"}
        best = _best_step(gram, rhs, yy, atoms, rest, kinds, const)
        if best is not None and best[0] < sse - 1e-9:
            sse, chosen = best[0], rest[:pos] + [best[1]] + rest[pos:]
    return chosen, sse


def _effusion(amps: dict[Atom, float], cfg: MeasureConfig) -> tuple[str, str]:
    eff = [a for a in amps if a.kind == "effusion"]
    if not eff:
        return "none", "none"
    side = "bilateral" if len(eff) == 2 else eff[0].where  # a "bilateral" atom names itself
    level = max(a.value for a in eff)
    lo, hi = cfg.size_cuts
    return side, "small" if level < lo else "moderate" if level < hi else "large"


def _heart(amps: dict[Atom, float], dic: Dictionary, cut: float) -> tuple[float, bool]:
    """CTR and enlargement from the heart atom: scale 1 + amplitude * (atom scale - 1), CTR interpolated."""
    atom = next((a for a in amps if a.kind == "heart"), None)
    scale = 1.0 + amps[atom] * (atom.value - 1.0) if atom else 1.0
    known = sorted(dic.heart_ctr.items())
    ctr = float(np.interp(scale, [k for k, _ in known], [v for _, v in known]))
    return ctr, scale > cut


def measure(image: np.ndarray, view: str, cfg: MeasureConfig | None = None,
            source: CTSource | None = None) -> TwinMeasurement:
    """Measure one view: PA (effusion side and size, pneumothorax side, lobe, CTR) or lateral
    (effusion presence and size, consolidation zone, heart enlarged)."""
    check_view(view)
    cfg = cfg or MeasureConfig()
    img = check_image(image)
    dic = dictionary(img.shape[-1], source)
    d, reg, region = difference(img, view, source)
    keep = [i for i, a in enumerate(dic.atoms) if view == "lateral" or a.where != "bilateral"]
    amps = fit_atoms(d, warp(dic.maps[view][keep], *reg), [dic.atoms[i] for i in keep], cfg, region)
    side, size = _effusion(amps, cfg)
    ctr, enlarged = _heart(amps, dic, cfg.heart_cut_scale if view == "pa" else cfg.lateral_heart_cut_scale)
    lobe = next((a.where for a in amps if a.kind == "consolidation"), "none")
    names = {f"{a.kind}:{a.where}:{a.value:g}": round(v, 3) for a, v in amps.items()}
    if view == "pa":
        ptx = next((a.where for a in amps if a.kind == "pneumothorax"), "none")
        return TwinMeasurement("pa", side, size, pneumothorax_side=ptx, consolidation_lobe=lobe, ctr=ctr,
                               cardiomegaly=enlarged, atoms=names)
    return TwinMeasurement("lateral", side, size, consolidation_zone=lateral_zone(lobe), cardiomegaly=enlarged,
                           atoms=names)


def lateral_zone(lobe: str) -> str:
    """The lateral view's zone of a lobe: upper, middle or lower (none for none)."""
    return next((z for z, lobes in LATERAL_ZONES.items() if lobe in lobes), "none")


def compare(measured: TwinMeasurement, truth: TwinFindings, ctr: float) -> dict[str, bool | float]:
    """Per-finding agreement of one view's measurement with the truth (``ctr``: the true CTR)."""
    if measured.view == "pa":
        return {"effusion_side": measured.effusion_side == truth.effusion_side,
                "effusion_size": (measured.effusion_side, measured.effusion_size)
                == (truth.effusion_side, truth.effusion_size),
                "pneumothorax_side": measured.pneumothorax_side == truth.pneumothorax_side,
                "consolidation_lobe": measured.consolidation_lobe == truth.consolidation_lobe,
                "cardiomegaly": measured.cardiomegaly == truth.cardiomegaly,
                "ctr_error": abs(float(measured.ctr) - ctr)}
    return {"effusion": measured.effusion_present == (truth.effusion_side != "none"),
            "effusion_size": measured.effusion_size == truth.effusion_size,
            "consolidation_zone": measured.consolidation_zone == lateral_zone(truth.consolidation_lobe),
            "cardiomegaly": measured.cardiomegaly == truth.cardiomegaly}


def accuracy(rows: list[dict]) -> dict[str, float]:
    """Mean of each field of :func:`compare` results."""
    if not rows:
        raise DataError("no comparisons to summarise; measure at least one image")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
