"""One twin case: findings edited into the CT, then a PA and a lateral DRR in the same geometry."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from cxrgen.twin.edits import Anatomy, apply_findings, load_anatomy
from cxrgen.twin.findings import TwinFindings, TwinMix, sample_twin_findings
from cxrgen.twin.render import VIEWS, Variation, Window, attenuation, display, project, project_points, sample_variation
from cxrgen.twin.volume import CTSource

WINDOW_PERCENTILES = (1.0, 99.9)  # of the finding-free nominal view: black and white points...
WINDOW_HEADROOM = 1.15  # ...the white point raised so that added fluid, heart or exposure never saturates


def voxel_for(size: int) -> float:
    """Working voxel size (mm) for an image side: about one detector pixel, 2-6 mm."""
    return float(np.clip(384.0 / size, 2.0, 6.0))


@dataclass(frozen=True, eq=False)
class TwinCase:
    """The truth and both views of one case; images (S, S) float32 in [0, 1], bright = attenuating."""

    findings: TwinFindings
    variation: Variation
    ctr: float  # cardiothoracic ratio on the PA view, from the projected heart and lung labels
    pa: np.ndarray
    lateral: np.ndarray
    # per view ("pa", "lateral"): the nodule's projected centre (column, row; fractional pixels) and radius (pixels);
    # empty without a nodule. Truth for training and checking detectors, never drawn into the images.
    nodule_sites: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def view(self, name: str) -> np.ndarray:
        return self.pa if name == "pa" else self.lateral


def nodule_site(anat: Anatomy, centre: np.ndarray, diameter_mm: float, view: str, size: int, var: Variation
                ) -> tuple[float, float, float]:
    """Where a nodule centred at voxel ``centre`` (3,) lands in a view: column, row (fractional pixels) and radius
    (pixels), through the same geometry as the rendering (``project_points``)."""
    half = diameter_mm / 2
    pts = anat.mm(np.asarray(centre)[None]) + np.array([[0, 0, 0], [0, 0, -half], [0, 0, half]], dtype=np.float32)
    uv = project_points(torch.from_numpy(pts.astype(np.float32)), view, size, var)  # (3, 2)
    radius = float(torch.linalg.vector_norm(uv[2] - uv[1])) / 2
    return float(uv[0, 0]), float(uv[0, 1]), radius


@functools.lru_cache(maxsize=8)
def view_window(view: str, source: CTSource | None = None) -> Window:
    """The display window of a view, fixed by the finding-free CT at the nominal geometry."""
    anat = load_anatomy(source, voxel_for(64))
    mu = attenuation(torch.from_numpy(anat.hu))[None]
    line = project(mu, view, 64, Variation(), anat.vol.voxel_mm, anat.vol.centre)[0].numpy()
    lo, hi = np.percentile(line, WINDOW_PERCENTILES)
    return Window(float(lo), float(lo + WINDOW_HEADROOM * (hi - lo)))


def projected_width(points_mm: np.ndarray, var: Variation) -> float:
    """Width (fraction of the PA image) of the projection of (N, 3) points in mm."""
    cols = project_points(torch.from_numpy(points_mm.astype(np.float32)), "pa", 1000, var)[:, 0]
    return float(cols.max() - cols.min()) / 1000.0


@functools.lru_cache(maxsize=8)
def _lung_hull(anat: Anatomy) -> np.ndarray:
    """Corner points (mm) of the lungs' convex hull: their projection has the lungs' extent."""
    from scipy.spatial import ConvexHull

    pts = anat.mm(np.concatenate(list(anat.lobes.values())))
    return pts[ConvexHull(pts).vertices]


def cardiothoracic_ratio(anat: Anatomy, heart: np.ndarray, var: Variation) -> float:
    """Projected heart width over the projected width of both lungs on the PA view (voxel edges included)."""
    half = anat.vol.voxel_mm / 2
    pad = np.array([[-half, 0, 0], [half, 0, 0]], dtype=np.float32)
    heart_pts = (anat.mm(heart)[:, None] + pad[None]).reshape(-1, 3)
    lung_pts = (_lung_hull(anat)[:, None] + pad[None]).reshape(-1, 3)
    return projected_width(heart_pts, var) / projected_width(lung_pts, var)


def render_case(findings: TwinFindings, var: Variation, size: int, rng: np.random.Generator,
                source: CTSource | None = None) -> TwinCase:
    """Edit ``findings`` into the CT and render both views with variation ``var``."""
    anat = load_anatomy(source, voxel_for(size))
    hu, heart, nodule = apply_findings(anat, findings, rng)
    mu = attenuation(torch.from_numpy(hu), var.bone)[None]  # (1, X, Y, Z) per mm
    images = {v: display(project(mu, v, size, var, anat.vol.voxel_mm, anat.vol.centre)[0],
                         view_window(v, source), var, rng) for v in VIEWS}
    sites = {v: nodule_site(anat, nodule, findings.nodule_mm, v, size, var) for v in VIEWS} if nodule is not None \
        else {}
    return TwinCase(findings=findings, variation=var, ctr=cardiothoracic_ratio(anat, heart, var), nodule_sites=sites,
                    **images)


def twin_sample(index: int, size: int, seed: int = 0, source: CTSource | None = None,
                mix: TwinMix | None = None, variation: float = 1.0) -> TwinCase:
    """Case ``index`` of a set: its own generator from (seed, index), so it does not depend on n.

    ``variation`` scales the non-finding variation (0: the nominal geometry and exposure, no noise)."""
    rng = np.random.default_rng([seed, index])
    findings = sample_twin_findings(rng, mix)
    var = sample_variation(rng, variation)
    return render_case(findings, var, size, rng, source)
