"""What the measurer knows about the twin: its finding-free views and where each structure projects.

The twin is always the same chest, so its normal appearance is known: for each view and size the
finding-free DRR at the nominal geometry (the template) and the projected thickness of each lobe and
of the heart (label maps rendered like the CT). :func:`register` finds the in-plane scale, tilt and
shift that best align the template with an image, on the parts of the chest that no finding changes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.twin.case import view_window, voxel_for
from cxrgen.twin.edits import load_anatomy
from cxrgen.twin.render import Variation, attenuation, check_view, display, project
from cxrgen.twin.volume import LOBE_LABELS, CTSource

STRUCTURES: tuple[str, ...] = (*LOBE_LABELS, "heart")
REGISTER_SIZE = 64  # registration runs at this size
SCALES = tuple(np.linspace(0.92, 1.08, 9))
ROLLS = tuple(np.linspace(-3.0, 3.0, 7))  # degrees
SHIFTS = tuple(np.linspace(-0.05, 0.05, 5))  # fraction of the half image, horizontal


@dataclass(frozen=True, eq=False)
class Reference:
    """Template image (S, S) in [0, 1] and projected structure thickness (C, S, S) in mm, one view."""

    view: str
    template: torch.Tensor
    thickness: torch.Tensor  # channels in STRUCTURES order

    def structure(self, name: str) -> torch.Tensor:
        return self.thickness[STRUCTURES.index(name)]


@functools.lru_cache(maxsize=16)
def reference(view: str, size: int, source: CTSource | None = None) -> Reference:
    """The template and structure thickness maps of ``view`` at ``size`` (rendered once, cached)."""
    check_view(view)
    anat = load_anatomy(source, voxel_for(size))
    var = Variation()
    mu = attenuation(torch.from_numpy(anat.hu))[None]
    image = display(project(mu, view, size, var, anat.vol.voxel_mm, anat.vol.centre)[0], view_window(view, source), var)
    label = torch.from_numpy(anat.label)
    names = [*LOBE_LABELS.values(), "heart"]
    masks = torch.stack([(label == anat.vol.ids[n]).float() for n in names])  # (C, X, Y, Z)
    thickness = project(masks, view, size, var, anat.vol.voxel_mm, anat.vol.centre)
    return Reference(view=view, template=torch.from_numpy(image), thickness=thickness)


def warp(maps: torch.Tensor, scale: float, roll_deg: float, shift: float) -> torch.Tensor:
    """Apply an in-plane similarity (about the image centre) to (C, S, S) maps (bilinear)."""
    t = math.radians(roll_deg)
    theta = torch.tensor([[math.cos(t) / scale, -math.sin(t) / scale, -shift],
                          [math.sin(t) / scale, math.cos(t) / scale, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, maps.shape[0], *maps.shape[1:]], align_corners=True)
    return F.grid_sample(maps[None], grid, align_corners=True)[0]


@functools.lru_cache(maxsize=1)
def _candidates() -> torch.Tensor:
    """(K, 2, 3) affine maps of every (scale, roll, shift) tried by :func:`register`."""
    out = []
    for s in SCALES:
        for r in ROLLS:
            for dx in SHIFTS:
                t = math.radians(r)
                out.append([[math.cos(t) / s, -math.sin(t) / s, -dx], [math.sin(t) / s, math.cos(t) / s, 0.0]])
    return torch.tensor(out, dtype=torch.float32)


def calibration_mask(ref: Reference) -> torch.Tensor:
    """Body pixels outside the lungs and the (generously dilated) heart: no finding changes them."""
    lungs = ref.thickness[: len(LOBE_LABELS)].sum(0) > 0
    heart = ref.structure("heart") > 0
    grow = max(1, ref.template.shape[-1] // 12)
    near = F.max_pool2d((lungs | heart).float()[None, None], 2 * grow + 1, 1, grow)[0, 0] > 0
    body = (ref.template > 0.05) & (ref.template < 0.97)
    return body & ~near


@functools.lru_cache(maxsize=8)
def _registration_samples(view: str, source: CTSource | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibration pixels of the small template and every candidate's template values there: (N,), (K, N)."""
    ref = reference(view, REGISTER_SIZE, source)
    m = calibration_mask(ref)
    thetas = _candidates()
    k, s = thetas.shape[0], REGISTER_SIZE
    grid = F.affine_grid(thetas, [k, 1, s, s], align_corners=True)[:, m]  # (K, N, 2)
    values = F.grid_sample(ref.template.expand(k, 1, s, s), grid[:, None], align_corners=True)[:, 0, 0]
    return m, values


def _correlations(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of (K, N) ``values`` with (N,) ``target``."""
    xc, yc = values - values.mean(1, keepdim=True), target[None] - target.mean()
    return (xc * yc).sum(1) / (xc.norm(dim=1) * yc.norm() + 1e-8)


def _refine(image: torch.Tensor, ref: Reference, mask: torch.Tensor, start: tuple[float, float, float],
            steps: tuple[float, float, float]) -> tuple[float, float, float]:
    """Best of the 27 neighbours of ``start`` (scale, roll, shift +- steps), at the image's own size."""
    cands = [(start[0] + a * steps[0], start[1] + b * steps[1], start[2] + c * steps[2])
             for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    thetas = torch.tensor([[[math.cos(math.radians(r)) / s, -math.sin(math.radians(r)) / s, -d],
                            [math.sin(math.radians(r)) / s, math.cos(math.radians(r)) / s, 0.0]]
                           for s, r, d in cands], dtype=torch.float32)
    k, n = thetas.shape[0], image.shape[-1]
    grid = F.affine_grid(thetas, [k, 1, n, n], align_corners=True)[:, mask]  # (K, N, 2)
    values = F.grid_sample(ref.template.expand(k, 1, n, n), grid[:, None], align_corners=True)[:, 0, 0]
    return cands[int(_correlations(values, image[mask]).argmax())]


@functools.lru_cache(maxsize=16)
def _full_mask(view: str, size: int, source: CTSource | None) -> torch.Tensor:
    return calibration_mask(reference(view, size, source))


def register(image: torch.Tensor, view: str, source: CTSource | None = None) -> tuple[float, float, float]:
    """The (scale, roll, shift) whose warped template best correlates with ``image`` on the calibration
    pixels: a coarse grid at REGISTER_SIZE, then two rounds of local refinement at the image's size."""
    m, x = _registration_samples(view, source)
    small = F.interpolate(image[None, None], size=(REGISTER_SIZE, REGISTER_SIZE), mode="area")[0, 0]
    best = int(_correlations(x, small[m]).argmax())
    n_r, n_d = len(ROLLS), len(SHIFTS)
    reg = (float(SCALES[best // (n_r * n_d)]), float(ROLLS[(best // n_d) % n_r]), float(SHIFTS[best % n_d]))
    ref, mask = reference(view, image.shape[-1], source), _full_mask(view, image.shape[-1], source)
    steps = (SCALES[1] - SCALES[0], ROLLS[1] - ROLLS[0], SHIFTS[1] - SHIFTS[0])
    for factor in (0.5, 0.25):
        reg = _refine(image, ref, mask, reg, tuple(factor * s for s in steps))
    return reg
