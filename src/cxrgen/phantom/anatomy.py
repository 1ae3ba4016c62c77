"""Phantom anatomy: the canonical geometry (shared with the measurer) and its per-image variation.

Coordinates are resolution independent: x runs left to right across the IMAGE and y top to
bottom, both in [0, 1]. Radiological convention: the patient's RIGHT lung lies on the image's
LEFT (x < midline), the heart extends further to the image's right (patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: Image-x direction pointing laterally (away from the midline) for each patient side.
LATERAL_SIGN: dict[str, float] = {"right": -1.0, "left": 1.0}


@dataclass(frozen=True)
class Geometry:
    """The canonical anatomy; the measurer may use these conventions, never the findings."""

    midline: float = 0.5
    apex_y: float = 0.15  # top of the lungs
    lung_height: float = 0.64  # apex to the right lateral costophrenic angle
    left_base_drop: float = 0.02  # the left hemidiaphragm sits lower than the right
    lateral: float = 0.38  # midline to the lateral lung edge (inner chest wall)
    medial: float = 0.06  # midline to the medial lung edge (mediastinum)
    apex_offset: float = 0.2  # midline to the lung apex
    shoulder: float = 0.35  # share of the lung height over which a lung widens to full width
    dome_offset: float = 0.19  # midline to the top of each diaphragm dome
    dome_height: float = 0.09  # dome top above the lateral costophrenic angle
    heart_cy: float = 0.66  # heart center height
    heart_half_height: float = 0.13  # semi-axis across the heart's long axis
    heart_tilt: float = 0.4  # long axis turned down toward the patient's left (radians)
    heart_left_share: float = 0.62  # share of the heart width on the patient's left of the midline
    body_cy: float = 0.78  # torso superellipse center, half sizes and exponent
    body_half_width: float = 0.485
    body_half_height: float = 0.74
    body_power: float = 4.0
    neck_half_width: float = 0.1
    neck_bottom: float = 0.12
    rib_top: float = 0.13  # first posterior rib's height at the spine
    rib_spacing: float = 0.074
    rib_count: int = 9
    rib_width: float = 0.02
    clavicle_y: float = 0.2  # medial end of the clavicles
    hilum_t: float = 0.4  # hilum height as a share of the lung height
    hilum_u: float = 0.2  # hilum position from the medial (0) to the lateral (1) lung edge
    edge_blur: float = 0.006  # anatomical softness of organ edges


CANONICAL = Geometry()


@dataclass(frozen=True)
class LungShape:
    """One lung field: apex, height and edges in image coordinates."""

    side: str  # patient's side: right (image left) or left (image right)
    midline: float
    apex_y: float
    height: float
    lateral: float  # midline to lateral edge
    medial: float  # midline to medial edge
    apex_offset: float
    shoulder: float
    dome_offset: float
    dome_height: float

    @property
    def sign(self) -> float:
        """+1 when lateral is toward larger image x (patient's left lung), else -1."""
        return LATERAL_SIGN[self.side]

    @property
    def base_y(self) -> float:
        """Height of the lateral costophrenic angle."""
        return self.apex_y + self.height


def lung_shapes(geo: Geometry) -> dict[str, LungShape]:
    """The two lung fields of a geometry, keyed by patient side."""
    common = {"midline": geo.midline, "lateral": geo.lateral, "medial": geo.medial,
              "apex_offset": geo.apex_offset, "shoulder": geo.shoulder, "dome_offset": geo.dome_offset,
              "dome_height": geo.dome_height, "apex_y": geo.apex_y}
    return {"right": LungShape(side="right", height=geo.lung_height, **common),
            "left": LungShape(side="left", height=geo.lung_height + geo.left_base_drop, **common)}


def _width_profile(t: np.ndarray, shoulder: float) -> np.ndarray:
    """Share of the full lung width reached at height t (a quarter circle from the apex)."""
    s = np.clip(t / shoulder, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - (1.0 - s) ** 2, 0.0, 1.0))


def diaphragm_y(x: np.ndarray, lung: LungShape) -> np.ndarray:
    """Height of the diaphragm under a lung: a dome whose sides fall to the costophrenic angle."""
    d = lung.sign * (x - lung.midline)  # distance from midline, positive on this lung's side
    reach = lung.lateral - lung.dome_offset
    bump = np.clip(1.0 - (np.clip(d - lung.dome_offset, 0.0, None) / reach) ** 2, 0.0, 1.0)  # flat medially
    return lung.base_y - lung.dome_height * bump


def lung_distance(x: np.ndarray, y: np.ndarray, lung: LungShape) -> np.ndarray:
    """Approximate signed distance to the lung outline (positive inside), in image units."""
    t = (y - lung.apex_y) / lung.height
    w = _width_profile(t, lung.shoulder)
    d = lung.sign * (x - lung.midline)
    to_lateral = lung.apex_offset + w * (lung.lateral - lung.apex_offset) - d
    to_medial = d - (lung.apex_offset - w * (lung.apex_offset - lung.medial))
    to_base = diaphragm_y(x, lung) - y
    to_apex = y - lung.apex_y
    return np.minimum(np.minimum(to_lateral, to_medial), np.minimum(to_base, to_apex))


def lung_point(lung: LungShape, u: float, t: float) -> tuple[float, float]:
    """Image (x, y) of lung coordinates u (0 medial .. 1 lateral edge) and t (0 apex .. 1 base)."""
    d = lung.medial + u * (lung.lateral - lung.medial)
    return lung.midline + lung.sign * d, lung.apex_y + t * lung.height


def soft_mask(distance: np.ndarray, width: float) -> np.ndarray:
    """A 0..1 mask from a signed distance, ramping over ``width`` (antialiased, resolution free)."""
    return np.clip(0.5 + distance / width, 0.0, 1.0)


def sample_geometry(rng: np.random.Generator, jitter: float = 1.0) -> Geometry:
    """The canonical geometry with small random variation (position, size, dome and heart shape)."""
    g = CANONICAL

    def j(scale: float) -> float:
        return float(rng.uniform(-scale, scale)) * jitter

    zoom = 1.0 + j(0.03)
    return replace(
        g,
        midline=g.midline + j(0.01),
        apex_y=g.apex_y + j(0.015),
        lung_height=g.lung_height * (zoom + j(0.02)),
        left_base_drop=g.left_base_drop + j(0.008),
        lateral=g.lateral * zoom,
        medial=g.medial + j(0.008),
        apex_offset=g.apex_offset + j(0.01),
        dome_height=g.dome_height + j(0.015),
        heart_cy=g.heart_cy + j(0.015),
        heart_half_height=g.heart_half_height + j(0.01),
        heart_tilt=g.heart_tilt + j(0.08),
        heart_left_share=g.heart_left_share + j(0.02),
        body_half_width=g.body_half_width * zoom + j(0.01),
        rib_top=g.rib_top + j(0.01),
        rib_spacing=g.rib_spacing * (1.0 + j(0.05)),
        clavicle_y=g.clavicle_y + j(0.01),
    )


def coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-center coordinates (x, y), each (size, size), in [0, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # x varies along columns, y along rows
