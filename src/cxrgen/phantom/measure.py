"""Read phantom findings back from pixels alone (the benchmark's ground-truth check).

The measurer knows the phantom's geometry conventions (``anatomy.CANONICAL``: where lungs, heart
and zones lie) but never the findings: it normalises the image between outside air (0) and
abdominal soft tissue (1), locates the chest walls and lung apices, then reads each finding from
intensity profiles. Sides are the PATIENT's: the image's right half is the patient's left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter, label

from cxrgen.data.images import resize_center_crop
from cxrgen.errors import DataError
from cxrgen.phantom.anatomy import (
    CANONICAL,
    LungShape,
    coordinates,
    lung_distance,
    lung_shapes,
)
from cxrgen.phantom.findings import CTR_CUT, SIDES, PhantomFindings


@dataclass(frozen=True)
class MeasureConfig:
    """Working resolution and the normalised-intensity cuts of the measurer (air 0, abdomen 1)."""

    work_size: int = 64  # every image is resampled to this many pixels first
    smooth_px: float = 1.0  # Gaussian smoothing (work pixels) against noise
    air_box: float = 0.06  # corner squares (image share) sampled for outside air
    abdomen_box: tuple[float, float, float, float] = (0.3, 0.42, 0.9, 0.97)  # x0, x1, y0, y1
    lung_cut: float = 0.78  # below: aerated lung; above: chest wall, fluid, heart
    wall_rows: tuple[float, float] = (0.33, 0.39)  # image rows where the chest wall is read
    apex_band: tuple[float, float] = (0.12, 0.28)  # midline distances averaged to find the apex
    apex_bias: float = 0.026  # measured apex minus true apex, from calibration
    fluid_band: tuple[float, float] = (0.88, 0.98)  # lateral share of the lung read for fluid
    fluid_bias: float = 0.0  # measured fluid height of a dry lung (costophrenic angle)
    size_cuts: tuple[float, float, float] = (0.105, 0.25, 0.44)  # none|small|moderate|large heights
    ptx_rim: tuple[float, float] = (0.015, 0.06)  # depth inside the lung outline read for pneumothorax
    ptx_apex_t: tuple[float, float] = (0.0, 0.35)  # lung heights of the apical rim
    ptx_pct: float = 25.0  # percentile of the apical rim compared with ptx_cut
    ptx_cut: float = 0.45  # apical rim darker than this: pneumothorax
    ptx_lower_t: tuple[float, float] = (0.45, 0.8)  # lung heights of the lower lateral rim
    ptx_large_cut: float = 0.5  # lower lateral rim (median) darker than this: large
    heart_rows: tuple[float, float] = (0.58, 0.8)
    heart_cut: float = 1.12  # first pass: brighter than this is heart
    heart_probe: float = 0.035  # distance either side of the first-pass edge for the midpoint cut
    zone_t: tuple[tuple[float, float], tuple[float, float]] = ((0.12, 0.45), (0.42, 0.7))
    zone_u: tuple[float, float] = (0.3, 0.85)
    zone_smooth_px: float = 1.5
    zone_heart_margin: float = 0.04  # distance kept from heart and fluid
    dense_cut: float = 1.05  # brighter than this (heart, heart over fluid) is never lung zone...
    heart_core: float = 0.04  # ...when it reaches within this distance of the midline (else: a dense lung finding)
    consolidation_cut: float = 0.815


MEASURE = MeasureConfig()


@dataclass(frozen=True)
class MeasuredFindings:
    """Findings read from an image, with the raw measurements behind each decision."""

    effusion_side: str
    effusion_size: str
    effusion_height: dict[str, float]  # fluid height per patient side, share of the lung height
    pneumothorax_side: str
    pneumothorax_extent: str
    pneumothorax_score: dict[str, float]  # dark percentile of the apical rim per side
    ctr: float
    consolidation_lobe: str
    consolidation_score: dict[str, float]  # brightest smoothed value per lobe zone

    @property
    def cardiomegaly(self) -> bool:
        """True when the measured cardiothoracic ratio is above the cut."""
        return self.ctr > CTR_CUT


def _size_of(height: float, cfg: MeasureConfig) -> str:
    cuts = cfg.size_cuts
    return "none" if height < cuts[0] else "small" if height < cuts[1] else "moderate" if height < cuts[2] else "large"


def _normalise(img: np.ndarray, cfg: MeasureConfig) -> np.ndarray:
    """Map outside air to 0 and abdominal soft tissue to 1 (both never touched by findings)."""
    n, box = img.shape[0], max(1, round(cfg.air_box * img.shape[0]))
    air = float(np.median(np.concatenate([img[:box, :box].ravel(), img[:box, -box:].ravel()])))
    x0, x1, y0, y1 = (round(v * n) for v in cfg.abdomen_box)
    abdomen = float(np.median(img[y0:y1, x0:x1]))
    if abdomen - air < 1e-3:
        raise DataError("image has no contrast between outside air and abdomen; is it a phantom CXR?")
    return (img - air) / (abdomen - air)


def _crossing(profile: np.ndarray, pos: np.ndarray, cut: float) -> float:
    """Position of the first point where ``profile`` rises to ``cut`` or above (linear interpolation)."""
    above = np.nonzero(profile >= cut)[0]
    if not len(above):
        return float(pos[-1])
    i = int(above[0])
    if i == 0:
        return float(pos[0])
    f = (cut - profile[i - 1]) / max(profile[i] - profile[i - 1], 1e-6)
    return float(pos[i - 1] + f * (pos[i] - pos[i - 1]))


def _sample(s: np.ndarray, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """Bilinear lookup of image ``s`` at image coordinates (x, y) in [0, 1]."""
    n = s.shape[0]
    fx = np.clip(np.asarray(x) * n - 0.5, 0, n - 1.001)
    fy = np.clip(np.asarray(y) * n - 0.5, 0, n - 1.001)
    x0, y0 = fx.astype(int), fy.astype(int)
    ax, ay = fx - x0, fy - y0
    return (s[y0, x0] * (1 - ax) * (1 - ay) + s[y0, x0 + 1] * ax * (1 - ay)
            + s[y0 + 1, x0] * (1 - ax) * ay + s[y0 + 1, x0 + 1] * ax * ay)


def _chest_walls(s: np.ndarray, cfg: MeasureConfig) -> dict[str, float]:
    """Image x of the inner chest wall on each side, read outward from the lung along a few rows."""
    ys = np.linspace(*cfg.wall_rows, 5)
    dist = np.linspace(0.49, 0.15, 137)  # inward: outside air, chest wall, then aerated lung
    walls = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        xs = CANONICAL.midline + sign * dist
        edges = []
        for yy in ys:
            row = _sample(s, xs, np.full_like(xs, yy))
            wall = int(np.argmax(row[: len(row) // 2]))  # chest wall: brightest point outside the lung
            cut = (row[wall] + np.median(row[len(row) // 2:])) / 2  # halfway to the lung's level
            edges.append(_crossing(-row[wall:], dist[wall:], -cut))
        walls[side] = CANONICAL.midline + sign * float(np.median(edges))
    return walls


def _lungs(s: np.ndarray, cfg: MeasureConfig) -> dict[str, LungShape]:
    """Lung outlines fitted to this image: chest walls and apices measured, the rest by convention."""
    walls = _chest_walls(s, cfg)
    midline = (walls["right"] + walls["left"]) / 2
    zoom = (walls["left"] - walls["right"]) / (2 * CANONICAL.lateral)
    out = {}
    ys = np.linspace(0.02, 0.5, 193)
    for side, lung in lung_shapes(CANONICAL).items():
        xs = midline + lung.sign * np.linspace(*cfg.apex_band, 9)
        profile = _sample(s, xs[None, :], ys[:, None]).mean(1)
        body = int(np.argmax(profile > cfg.lung_cut))  # skip the air above the shoulders
        apex = _crossing(-profile[body:], ys[body:], -cfg.lung_cut) - cfg.apex_bias  # first dark row
        out[side] = replace(lung, midline=midline, apex_y=apex, height=lung.height * zoom,
                            lateral=(walls["left"] - walls["right"]) / 2)
    return out


def _fluid_height(s: np.ndarray, lung: LungShape, cfg: MeasureConfig) -> float:
    """Height of the fluid column at the lateral chest wall, as a share of the lung height."""
    ts = np.linspace(0.3, 1.1, 161)
    ds = lung.medial + np.linspace(*cfg.fluid_band, 5) * (lung.lateral - lung.medial)
    xs = lung.midline + lung.sign * ds
    profile = _sample(s, xs[None, :], (lung.apex_y + ts * lung.height)[:, None]).mean(1)
    dark = np.nonzero(profile < cfg.lung_cut)[0]
    if not len(dark):
        return 1.0 - float(ts[0])
    i = int(dark[-1])  # lowest aerated point; fluid (or the diaphragm) below it
    if i + 1 < len(ts):
        f = (cfg.lung_cut - profile[i]) / max(profile[i + 1] - profile[i], 1e-6)
        t = ts[i] + f * (ts[i + 1] - ts[i])
    else:
        t = ts[i]
    return float(1.0 - t - cfg.fluid_bias)


def _rim_level(s: np.ndarray, lung: LungShape, t_range: tuple[float, float], pct: float,
               cfg: MeasureConfig) -> float:
    """A percentile of the normalised intensity just inside the lung outline, between heights t_range."""
    x, y = coordinates(s.shape[0])
    d = lung_distance(x, y, lung)
    t = (y - lung.apex_y) / lung.height
    lateral = lung.sign * (x - lung.midline) > lung.medial + 0.5 * (lung.lateral - lung.medial)
    sel = (d > cfg.ptx_rim[0]) & (d < cfg.ptx_rim[1]) & (t > t_range[0]) & (t < t_range[1])
    sel &= lateral | (t < 0.15)
    return float(np.percentile(s[sel], pct)) if sel.any() else 1.0


def _heart_edges(s: np.ndarray, midline: float, ys: np.ndarray, cfg: MeasureConfig) -> dict[str, np.ndarray]:
    """Per row of ``ys``: distance from the midline to the heart border on each side (midpoint cut)."""
    dist = np.linspace(0.05, 0.45, 161)
    out = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        rows = _sample(s, (midline + sign * dist)[None, :], ys[:, None])  # (R, D)
        edges = []
        for row in rows:
            first = _crossing(-row, dist, -cfg.heart_cut)  # first point darker than the heart cut
            inner = np.interp(max(first - cfg.heart_probe, dist[0]), dist, row)
            outer = np.interp(first + cfg.heart_probe, dist, row)
            edges.append(_crossing(-row, dist, -(inner + outer) / 2) if inner > outer else first)
        out[side] = np.asarray(edges)
    return out


def _consolidation(n: np.ndarray, s: np.ndarray, lungs: dict[str, LungShape], fluid_top: dict[str, float],
                   cfg: MeasureConfig) -> dict[str, float]:
    """Brightest smoothed value inside each lobe zone, away from heart, hilum and fluid."""
    z = gaussian_filter(n, cfg.zone_smooth_px)
    x, y = coordinates(n.shape[0])
    margin = max(1, round(cfg.zone_heart_margin * n.shape[0]))
    # heart (and heart over fluid): the bright regions that reach the midline; a bright patch inside
    # a lung that does not reach it (a dense consolidation) stays readable
    parts, _ = label((s > cfg.dense_cut) & (y > cfg.heart_rows[0] - 0.2))
    midline = lungs["right"].midline
    central = np.unique(parts[np.abs(x - midline) < cfg.heart_core])
    dense = binary_dilation(np.isin(parts, central[central > 0]), iterations=margin)
    scores = {}
    for side, lung in lungs.items():
        d = lung.sign * (x - lung.midline)
        u = (d - lung.medial) / (lung.lateral - lung.medial)
        t = (y - lung.apex_y) / lung.height
        free = (u > cfg.zone_u[0]) & (u < cfg.zone_u[1]) & ~dense
        free &= y < fluid_top[side] - cfg.zone_heart_margin
        for zone, (t0, t1) in zip(("upper", "lower"), cfg.zone_t, strict=True):
            sel = free & (t > t0) & (t < t1)
            scores[f"{side}_{zone}"] = float(z[sel].max()) if sel.any() else 0.0
    return scores


def measure(image: np.ndarray, cfg: MeasureConfig = MEASURE) -> MeasuredFindings:
    """Read effusion, pneumothorax, cardiothoracic ratio and consolidation from a phantom image."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise DataError(f"measure expects a square (H, W) phantom image, got shape {img.shape}")
    n = _normalise(resize_center_crop(img, cfg.work_size), cfg)
    s = gaussian_filter(n, cfg.smooth_px)
    lungs = _lungs(s, cfg)
    heights = {side: _fluid_height(s, lung, cfg) for side, lung in lungs.items()}
    wet = [side for side in SIDES if heights[side] >= cfg.size_cuts[0]]
    eff_side = "bilateral" if len(wet) == 2 else wet[0] if wet else "none"
    eff_size = _size_of(max(heights[w] for w in wet), cfg) if wet else "none"
    rim = {side: _rim_level(s, lung, cfg.ptx_apex_t, cfg.ptx_pct, cfg) for side, lung in lungs.items()}
    darker = min(rim, key=rim.get)
    ptx_side = darker if rim[darker] < cfg.ptx_cut else "none"
    ptx_extent = "none"
    if ptx_side != "none":
        low = _rim_level(s, lungs[ptx_side], cfg.ptx_lower_t, 50.0, cfg)
        ptx_extent = "large" if low < cfg.ptx_large_cut else "apical"
    midline = lungs["right"].midline
    heart_ys = np.linspace(0.42, cfg.heart_rows[1], 31)
    heart = _heart_edges(s, midline, heart_ys, cfg)
    rows = heart_ys >= cfg.heart_rows[0]
    ctr = float((heart["right"][rows].max() + heart["left"][rows].max()) / (2 * lungs["right"].lateral))
    fluid_top = {side: lung.base_y - heights[side] * lung.height if side in wet else 1.0
                 for side, lung in lungs.items()}
    zones = _consolidation(n, s, lungs, fluid_top, cfg)
    best = max(zones, key=zones.get)
    lobe = best if zones[best] > cfg.consolidation_cut else "none"
    return MeasuredFindings(eff_side, eff_size, heights, ptx_side, ptx_extent, rim, ctr, lobe, zones)


def compare(measured: MeasuredFindings, truth: PhantomFindings) -> dict[str, bool | float]:
    """Per-finding agreement of a measurement with the truth (the benchmark's scoring unit)."""
    out: dict[str, bool | float] = {
        "effusion_side": measured.effusion_side == truth.effusion_side,
        "effusion_size": (measured.effusion_side, measured.effusion_size)
        == (truth.effusion_side, truth.effusion_size),
        "pneumothorax_side": measured.pneumothorax_side == truth.pneumothorax_side,
        "pneumothorax_extent": (measured.pneumothorax_side, measured.pneumothorax_extent)
        == (truth.pneumothorax_side, truth.pneumothorax_extent),
        "cardiomegaly": measured.cardiomegaly == truth.cardiomegaly,
        "consolidation_lobe": measured.consolidation_lobe == truth.consolidation_lobe,
        "ctr_error": abs(measured.ctr - truth.ctr),
    }
    out["all"] = all(v for k, v in out.items() if isinstance(v, bool))
    return out


def accuracy(rows: list[dict[str, bool | float]]) -> dict[str, float]:
    """Mean of each boolean field of :func:`compare` results (and the mean CTR error)."""
    if not rows:
        raise DataError("no comparisons to summarise; measure at least one image")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
