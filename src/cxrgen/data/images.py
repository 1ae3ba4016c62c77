"""Image I/O: PNG, JPEG and DICOM to one pixel convention, resize + center crop, PNG writing.

Every image becomes a float32 (H, W) array in [0, 1] where dense tissue (bone) is bright, then a
(1, size, size) tensor in [ImageConfig.low, ImageConfig.high]. Nothing here ever flips an image:
laterality is part of the report, so EXIF orientation is ignored on purpose (a mirrored
orientation tag would swap left and right).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import torch
from PIL import Image, PngImagePlugin
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrgen.config import ImageConfig
from cxrgen.errors import ConfigError, DataError, ImageReadError

log = logging.getLogger(__name__)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

#: File suffixes always read as DICOM; other files are DICOM when they carry the "DICM" magic.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
#: The DICOM file format: a 128-byte preamble, then these four bytes (PS3.10 section 7.1).
DICOM_MAGIC, DICOM_MAGIC_OFFSET = b"DICM", 128
#: Raster formats decoded with Pillow (MPO: JPEG files with extra frames from some cameras).
PIL_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO")
#: ITU-R BT.601 luma weights for RGB -> gray (the weights Pillow's "L" conversion uses).
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: Resampling filter: antialiased Lanczos on float32 images (the shared sets were made with it).
RESAMPLE = Image.Resampling.LANCZOS
#: Bytes read at a time when hashing a file.
HASH_CHUNK_BYTES = 1 << 20
PNG_BITS: tuple[int, ...] = (8, 16)

_MAX_8BIT, _MAX_16BIT = 255.0, 65535.0
_PIL_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# What the decoders raise on broken input; re-raised as ImageReadError naming the file.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, InvalidDicomError,
    AttributeError, KeyError, IndexError, NotImplementedError, RuntimeError, TypeError,
    Image.DecompressionBombError,
)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file into a float32 (H, W) array in [0, 1], dense = bright."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(
            f"image file {path} does not exist; check the manifest's image_path and the data root"
        )
    try:
        img = _read_dicom(path) if is_dicom(path) else _read_pil(path)
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageReadError(
            f"cannot decode image {path} ({type(exc).__name__}: {exc}); the file is corrupt, "
            "truncated or not PNG/JPEG/DICOM: re-download or re-export it, or drop its row"
        ) from exc
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def is_dicom(path: str | Path) -> bool:
    """True when ``path`` has a DICOM suffix or carries the "DICM" magic after the preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as fh:
        head = fh.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def _read_pil(path: Path) -> np.ndarray:
    """PNG/JPEG -> float64 (H, W) in [0, 1]: 16-bit kept at full precision, RGB to luma."""
    with Image.open(path) as im:
        if im.format not in PIL_FORMATS:
            raise ImageReadError(
                f"image {path} is {im.format or 'an unknown format'}; cxrgen reads "
                f"{', '.join(PIL_FORMATS)} and DICOM: convert the file to PNG"
            )
        im.load()  # decode now so truncated files fail here
        if im.mode in _PIL_16BIT_MODES:
            return np.asarray(im, dtype=np.float64) / _MAX_16BIT
        if im.mode == "L":
            return np.asarray(im, dtype=np.float64) / _MAX_8BIT
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)  # (H, W, 3), drops any alpha
    return (rgb @ np.asarray(LUMA_WEIGHTS)) / _MAX_8BIT  # (H, W)


def _read_dicom(path: Path) -> np.ndarray:
    """DICOM -> float64 (H, W) in [0, 1] via Modality LUT, VOI LUT/window, MONOCHROME1 inversion."""
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ImageReadError(f"DICOM file {path} holds no pixel data; it is not an image: drop its row")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            f"DICOM file {path} has PhotometricInterpretation {photometric}; cxrgen reads "
            "grayscale radiographs only (MONOCHROME1/2): convert it to grayscale first"
        )
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        raise ImageReadError(
            f"cannot decode the pixel data of DICOM file {path} ({exc}); for compressed transfer "
            "syntaxes install a pydicom decoder (pylibjpeg[all] or python-gdcm)"
        ) from exc
    if stored.ndim != 2:
        raise ImageReadError(
            f"DICOM file {path} has pixel array shape {stored.shape}; expected one grayscale "
            "frame (H, W): export a single-frame radiograph"
        )
    values = apply_modality_lut(stored, ds)
    shown, display_range = _apply_voi(values, ds)
    low, high = display_range if display_range is not None else (shown.min(), shown.max())
    unit = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the VOI LUT or window; return the result and its output range (None: no VOI given).

    The output range is what the VOI transform maps the most extreme inputs to (PS3.3 C.11.2),
    so a window wider than the image's own values is not stretched to full contrast.
    """
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return np.asarray(values, dtype=np.float64), None
    if has_lut and np.issubdtype(np.asarray(values).dtype, np.floating):
        values = np.rint(values).astype(np.int64)  # a LUT indexes integer values
    shown = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    if has_lut:  # the LUT's whole input domain maps onto its output range
        entries, first_mapped = ds.VOILUTSequence[0].LUTDescriptor[:2]
        probe = np.arange(first_mapped, first_mapped + (entries or 1 << 16), dtype=np.int64)
    else:  # the window maps the most extreme inputs onto its output range
        extreme = np.finfo(np.float64).max / 4
        probe = np.array([-extreme, extreme], dtype=np.float64)
    with np.errstate(over="ignore"):  # the SIGMOID window overflows exp() at the extremes
        ends = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    return shown, (float(ends.min()), float(ends.max()))


# --------------------------------------------------------------------------------------------
# Geometry and pixel range
# --------------------------------------------------------------------------------------------
def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (antialiased Lanczos, float32), then center crop; never flips."""
    if size <= 0:
        raise ConfigError(f"resize size={size}: give a positive pixel count")
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise DataError(f"resize_center_crop expects a 2-D (H, W) image, got shape {img.shape}")
    height, width = img.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        resized = Image.fromarray(img).resize((new_w, new_h), RESAMPLE)  # float32: mode "F"
        img = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # Lanczos rings past [0, 1]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def to_unit_range(x: ArrayOrTensor, cfg: ImageConfig) -> ArrayOrTensor:
    """Map model pixels in [cfg.low, cfg.high] to [0, 1] (tensor or array; no clipping)."""
    return (x - cfg.low) / (cfg.high - cfg.low)


def from_unit_range(x: ArrayOrTensor, cfg: ImageConfig) -> ArrayOrTensor:
    """Map pixels in [0, 1] to the model range [cfg.low, cfg.high] (tensor or array)."""
    return x * (cfg.high - cfg.low) + cfg.low


def load_image(path: str | Path, cfg: ImageConfig) -> torch.Tensor:
    """Read, resize + center crop to ``cfg.size`` and map to [cfg.low, cfg.high]: float32 (1, H, W)."""
    unit = resize_center_crop(read_image(path), cfg.size)
    return from_unit_range(torch.from_numpy(unit), cfg).unsqueeze(0).float()  # (1, H, W)


# --------------------------------------------------------------------------------------------
# Writing and hashing
# --------------------------------------------------------------------------------------------
def save_png(
    img: torch.Tensor | np.ndarray,
    path: str | Path,
    cfg: ImageConfig,
    bits: int = 8,
    text: dict[str, str] | None = None,
) -> Path:
    """Write an image in [cfg.low, cfg.high], shape (H, W) or (1, H, W), as a grayscale PNG.

    ``bits`` is 8 or 16; ``text`` becomes PNG tEXt chunks (prompt, seed, model ...).
    """
    if bits not in PNG_BITS:
        raise ConfigError(f"save_png bits={bits}: use one of {PNG_BITS}")
    if isinstance(img, torch.Tensor):
        img = img.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # (1, H, W) -> (H, W)
    if arr.ndim != 2:
        raise DataError(f"save_png expects a (H, W) or (1, H, W) image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"image for {path} has NaN or infinite pixels; check the model output")
    top = (1 << bits) - 1
    levels = np.rint(np.clip(to_unit_range(arr, cfg), 0.0, 1.0) * top)
    pixels = levels.astype(np.uint8 if bits == 8 else np.uint16)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(str(key), str(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", pnginfo=info)
    return path


def file_sha1(path: str | Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """SHA-1 hex digest of the file's bytes, read in chunks (finds identical image files)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot hash {path}: the file does not exist; check the image path")
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
