"""Render a phantom chest X-ray: summed projected densities, then an exposure curve and noise.

Every structure adds (bone, heart, fluid) or removes (lung air) density along the ray; the image
is ``offset + scale * (1 - exp(-k * density))`` (Beer-Lambert attenuation, bright = dense) plus
Gaussian noise. All geometry lives in resolution-free [0, 1] coordinates (see ``anatomy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrgen.config import PhantomConfig
from cxrgen.errors import ConfigError
from cxrgen.phantom.anatomy import (
    Geometry,
    LungShape,
    coordinates,
    diaphragm_y,
    lung_distance,
    lung_point,
    lung_shapes,
    sample_geometry,
    soft_mask,
)
from cxrgen.phantom.findings import EFFUSION_HEIGHTS, PhantomFindings


@dataclass(frozen=True)
class Densities:
    """Projected density of each tissue (body soft tissue = 1) and the exposure ranges."""

    body_core: float = 0.75  # soft tissue at the body edge; rises to 1 at the midline
    lung_air: float = 0.62  # density removed by a fully aerated lung
    lung_rim: float = 0.35  # share of the air at the lung edge (thin lung there)
    lung_rim_depth: float = 0.05  # distance from the edge at which the lung is fully thick
    ptx_air: float = 0.95  # density removed in a pneumothorax: no lung tissue left, the most lucent part of the chest
    heart: float = 0.4  # added on top of hiding the lung behind it
    mediastinum: float = 0.1
    heart_hides_lung: float = 1.0  # share of lung air in front of/behind the heart
    fluid: float = 0.85  # share of lung air replaced by pleural fluid
    consolidation: float = 0.7
    spine: float = 0.22
    rib: float = 0.1
    anterior_rib: float = 0.04
    clavicle: float = 0.25
    aortic_knob: float = 0.25
    trachea_air: float = 0.2
    vessel: float = 0.15
    mottle: float = 0.03
    pleural_line: float = 0.12
    k: tuple[float, float] = (0.9, 1.2)  # attenuation coefficient of the exposure curve
    offset: tuple[float, float] = (0.0, 0.04)
    scale: tuple[float, float] = (0.92, 1.0)


DENSITY = Densities()
VESSEL_BRANCHES = 10  # main vessel branches per lung (each with one side branch)
#: Lung size after collapse (share, toward the hilum) per pneumothorax extent.
PTX_COLLAPSE: dict[str, tuple[float, float]] = {"apical": (0.74, 0.78), "large": (0.62, 0.7)}
APICAL_PTX_REACH = 0.42  # an apical pneumothorax stays above this share of the lung height


def _line_profile(dist: np.ndarray, width: float, size: int) -> np.ndarray:
    """A line of true ``width`` seen at ``size`` pixels: blurred to a pixel, same integral."""
    eff = float(np.hypot(width, 0.6 / size))
    return (width / eff) * np.exp(-((dist / eff) ** 2))


def _segments_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Distance of every pixel to each segment a->b, and the position along it: both (S, N)."""
    ab = b - a  # (S, 2)
    ap_x = px[None, :] - a[:, 0:1]  # (S, N)
    ap_y = py[None, :] - a[:, 1:2]
    s = np.clip((ap_x * ab[:, 0:1] + ap_y * ab[:, 1:2]) / (ab ** 2).sum(1, keepdims=True), 0.0, 1.0)
    return np.hypot(ap_x - s * ab[:, 0:1], ap_y - s * ab[:, 1:2]), s


def _vessels(x, y, lung: LungShape, geo: Geometry, size: int, rng: np.random.Generator,
             where: np.ndarray) -> np.ndarray:
    """Branching vessel markings radiating from the hilum, tapering toward the periphery (only at ``where``)."""
    hilum = np.array(lung_point(lung, geo.hilum_u, geo.hilum_t))
    targets = np.array([lung_point(lung, u, t) for u, t in zip(rng.uniform(0.25, 1.0, VESSEL_BRANCHES),
                                                              rng.uniform(0.02, 0.98, VESSEL_BRANCHES), strict=True)])
    ends = hilum + (targets - hilum) * rng.uniform(0.7, 0.95, (VESSEL_BRANCHES, 1))
    forks = hilum + (ends - hilum) * rng.uniform(0.3, 0.6, (VESSEL_BRANCHES, 1))
    turn = rng.uniform(0.3, 0.7, VESSEL_BRANCHES) * rng.choice([-1.0, 1.0], VESSEL_BRANCHES)
    rest = ends - forks
    side_ends = forks + np.stack([rest[:, 0] * np.cos(turn) - rest[:, 1] * np.sin(turn),
                                  rest[:, 0] * np.sin(turn) + rest[:, 1] * np.cos(turn)], 1) * 0.7
    a = np.concatenate([np.repeat(hilum[None], VESSEL_BRANCHES, 0), forks])  # (S, 2)
    b = np.concatenate([ends, side_ends])
    start = np.concatenate([np.zeros(VESSEL_BRANCHES), np.full(VESSEL_BRANCHES, 0.5)])[:, None].astype(np.float32)
    a, b = a.astype(np.float32), b.astype(np.float32)
    px, py = x[where], y[where]  # only pixels inside the lung: (N,)
    dist, s = _segments_distance(px, py, a, b)  # (S, N)
    along = start + (1.0 - start) * s  # 0 at the hilum, 1 at the branch tip
    width = 0.009 * (1.0 - 0.65 * along)
    eff = np.sqrt(width ** 2 + (0.6 / size) ** 2)
    profile = (width / eff) * np.exp(-((dist / eff) ** 2)) * (1.0 - 0.6 * along)
    out = np.zeros_like(x)
    out[where] = profile.max(0) * DENSITY.vessel
    return out


def _mottle(x, y, rng: np.random.Generator, n_waves: int = 6) -> np.ndarray:
    """Low-contrast parenchymal texture: a sum of random plane waves (resolution free)."""
    freq = rng.uniform(8.0, 22.0, n_waves)
    angle = rng.uniform(0.0, np.pi, n_waves)
    phase = rng.uniform(0.0, 2 * np.pi, n_waves)
    out = np.zeros_like(x)
    for f, a, p in zip(freq, angle, phase, strict=True):
        out += np.cos(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a)) + p)
    return out / np.sqrt(n_waves)


def _bones(x, y, geo: Geometry, lungs: dict[str, LungShape], edge: float) -> np.ndarray:
    """Spine with vertebral bodies, posterior and anterior ribs, clavicles."""
    dens = DENSITY
    d = np.abs(x - geo.midline)
    vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * (y - geo.apex_y) / (geo.rib_spacing * 0.75))
    out = dens.spine * soft_mask(0.035 - d, edge) * vertebrae
    floor = np.where(x < geo.midline, diaphragm_y(x, lungs["right"]), diaphragm_y(x, lungs["left"]))
    chest = soft_mask(geo.lateral + 0.03 - d, edge) * soft_mask(d - 0.03, edge) * soft_mask(floor - y, edge)
    for k in range(geo.rib_count):
        y0 = geo.rib_top + k * geo.rib_spacing
        centre = y0 - 0.35 * d + 1.6 * d ** 2
        out += dens.rib * soft_mask(geo.rib_width / 2 - np.abs(y - centre), edge) * chest
        front = y0 + 0.1 + 0.3 * (geo.lateral - d)
        fade = soft_mask(d - 0.12, 0.05)
        out += dens.anterior_rib * soft_mask(geo.rib_width / 2 - np.abs(y - front), edge) * chest * fade
    dc = np.clip(d - 0.04, 0.0, None)
    clav = geo.clavicle_y - 0.35 * dc + 0.35 * dc ** 2
    span = soft_mask(d - 0.04, edge) * soft_mask(0.31 - d, edge)
    out += dens.clavicle * soft_mask(0.011 - np.abs(y - clav), edge) * span
    return out


def _body(x, y, geo: Geometry, edge: float) -> np.ndarray:
    """Soft tissue: a torso superellipse plus the neck, thickest at the midline."""
    rx = (x - geo.midline) / geo.body_half_width
    ry = (y - geo.body_cy) / geo.body_half_height
    torso = soft_mask((1.0 - np.abs(rx) ** geo.body_power - ry ** 2) * 0.25, edge)
    neck = soft_mask(geo.neck_half_width - np.abs(x - geo.midline), edge) * soft_mask(geo.neck_bottom + 0.1 - y, edge)
    thick = DENSITY.body_core + (1.0 - DENSITY.body_core) * np.sqrt(np.clip(1.0 - rx ** 2, 0.0, 1.0))
    return np.maximum(torso, neck) * thick


def heart_axes(geo: Geometry, ctr: float) -> tuple[float, float, float]:
    """Center x and semi-axes (long, short) of the tilted heart ellipse whose width is ctr * thorax."""
    half = ctr * geo.lateral  # horizontal half-extent: ctr * (2 * lateral) / 2
    short = min(geo.heart_half_height, 0.9 * half)
    c, s = np.cos(geo.heart_tilt), np.sin(geo.heart_tilt)
    long = float(np.sqrt((half ** 2 - (short * s) ** 2) / c ** 2))  # half-extent^2 = L^2 c^2 + S^2 s^2
    return geo.midline + (geo.heart_left_share - 0.5) * 2 * half, long, short


def _heart(x, y, geo: Geometry, lungs: dict[str, LungShape], ctr: float, edge: float):
    """Tilted heart ellipse (width = ctr * thoracic width) resting on the diaphragm, and the aortic knob."""
    cx, long, short = heart_axes(geo, ctr)
    c, s = np.cos(geo.heart_tilt), np.sin(geo.heart_tilt)
    dx, dy = x - cx, y - geo.heart_cy
    r = np.hypot((dx * c + dy * s) / long, (-dx * s + dy * c) / short)
    heart = soft_mask((1.0 - r) * short, edge)
    floor = diaphragm_y(x, lungs["left"])  # one floor for both sides: no step at the midline
    knob = soft_mask(0.035 - np.hypot(x - geo.midline - 0.065, y - geo.apex_y - 0.17), edge)
    mediastinum = soft_mask(geo.medial + 0.01 - np.abs(x - geo.midline), edge) * soft_mask(floor - y, edge)
    return heart * soft_mask(floor + 0.01 - y, edge), knob, mediastinum


def _pneumothorax(x, y, lung: LungShape, geo: Geometry, extent: str, rng: np.random.Generator,
                  edge: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Air space between chest wall and collapsed lung (0..1) and the visible pleural line."""
    hx, hy = lung_point(lung, geo.hilum_u, geo.hilum_t)
    s = rng.uniform(*PTX_COLLAPSE[extent])
    collapsed = lung_distance(hx + (x - hx) / s, hy + (y - hy) / s, lung) * s
    inside = soft_mask(lung_distance(x, y, lung), edge)
    if extent == "apical":
        inside = inside * soft_mask(lung.apex_y + APICAL_PTX_REACH * lung.height - y, 0.03)
    region = inside * soft_mask(-collapsed, edge)
    line = _line_profile(collapsed, 0.004, size) * inside
    return region, line


def render(findings: PhantomFindings, size: int, rng: np.random.Generator,
           cfg: PhantomConfig | None = None) -> np.ndarray:
    """A (size, size) float32 chest X-ray phantom in [0, 1] (bright = dense) showing ``findings``."""
    if size < 16:
        raise ConfigError(f"phantom size={size}: give at least 16 pixels")
    cfg = cfg or PhantomConfig()
    geo = sample_geometry(rng, cfg.anatomy_jitter)
    lungs = lung_shapes(geo)
    x, y = coordinates(size)
    edge = max(geo.edge_blur, 1.0 / size)
    dens = DENSITY
    heart, knob, mediastinum = _heart(x, y, geo, lungs, findings.ctr, edge)
    total = _body(x, y, geo, edge) + _bones(x, y, geo, lungs, edge)
    total += dens.heart * heart + dens.aortic_knob * knob + dens.mediastinum * mediastinum
    trachea = soft_mask(0.018 - np.abs(x - geo.midline), edge) * soft_mask(geo.apex_y + 0.2 - y, 0.03)
    total -= dens.trachea_air * trachea
    for lung in lungs.values():
        total += _lung(x, y, lung, geo, findings, size, edge, heart, rng)
    k, offset, scale = (rng.uniform(*r) for r in (dens.k, dens.offset, dens.scale))
    image = offset + scale * (1.0 - np.exp(-k * np.clip(total, 0.0, None)))
    image += rng.normal(0.0, rng.uniform(*cfg.noise_std), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _lung(x, y, lung: LungShape, geo: Geometry, findings: PhantomFindings, size: int, edge: float,
          heart: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Density change of one lung field (negative: air) with its findings."""
    dens = DENSITY
    dist = lung_distance(x, y, lung)
    mask = soft_mask(dist, edge)
    depth = dens.lung_rim + (1 - dens.lung_rim) * np.sqrt(np.clip(dist / dens.lung_rim_depth, 0.0, 1.0))
    air = dens.lung_air * mask * depth * (1.0 - dens.heart_hides_lung * heart)
    markings = (_vessels(x, y, lung, geo, size, rng, mask > 0) + dens.mottle * _mottle(x, y, rng)) * mask
    extra = np.zeros_like(x)
    if lung.side in findings.effusion_sides:
        low, high = EFFUSION_HEIGHTS[findings.effusion_size]
        height = rng.uniform(low, high) * lung.height
        u = np.clip((lung.sign * (x - lung.midline) - lung.medial) / (lung.lateral - lung.medial), 0, 1)
        top = lung.base_y - height + 0.5 * height * (1.0 - u) ** 2  # meniscus: rises laterally
        fluid = soft_mask(y - top, 1.5 * edge) * mask
        air = air * (1.0 - dens.fluid * fluid)
        markings = markings * (1.0 - 0.8 * fluid)
    if lung.side == findings.pneumothorax_side:
        region, line = _pneumothorax(x, y, lung, geo, findings.pneumothorax_extent, rng, edge, size)
        air = air * (1.0 - region) + dens.ptx_air * region * (1.0 - dens.heart_hides_lung * heart)
        markings = markings * (1.0 - region) + dens.pleural_line * line
    if findings.consolidation_side == lung.side:
        upper = findings.consolidation_lobe.endswith("upper")
        u0, t0 = (0.48, 0.27) if upper else (0.52, 0.52)
        cx, cy = lung_point(lung, u0 + rng.uniform(-0.06, 0.06), t0 + rng.uniform(-0.03, 0.03))
        radius = rng.uniform(0.07, 0.085)
        lobules = np.ones_like(x)
        for ox, oy in rng.uniform(-0.55, 0.55, (6, 2)) * radius:
            lobules *= 1.0 - np.exp(-(((x - cx - ox) ** 2 + (y - cy - oy) ** 2) / (0.45 * radius) ** 2))
        patch = (1.0 - lobules) * (0.8 + 0.2 * _mottle(x, y, rng, 4)) * mask
        extra += dens.consolidation * np.clip(patch, 0.0, 1.0)
    return markings + extra - air
