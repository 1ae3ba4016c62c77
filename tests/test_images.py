"""Image I/O: PNG/JPEG/DICOM decoding, windowing and inversion, resize + crop, PNG writing, hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrgen.config import ImageConfig
from cxrgen.data.images import (
    file_sha1,
    from_unit_range,
    is_dicom,
    load_image,
    read_image,
    resize_center_crop,
    save_png,
    to_unit_range,
)
from cxrgen.errors import ConfigError, DataError, ImageReadError

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _ramp(height: int, width: int) -> np.ndarray:
    """A (H, W) float image in [0, 1] rising left to right and top to bottom."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x + y) / (height + width - 2)).astype(np.float32)


def _write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """Write an uncompressed 16-bit single-frame DX DICOM with the given extra tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# PNG and JPEG
# --------------------------------------------------------------------------------------------
def test_png_8bit_round_trip(tmp_path: Path) -> None:
    cfg = ImageConfig(size=32)
    levels = np.random.default_rng(0).integers(0, 256, size=(20, 30))
    unit = (levels / 255.0).astype(np.float32)
    path = save_png(from_unit_range(torch.from_numpy(unit), cfg)[None], tmp_path / "a.png", cfg)
    assert Image.open(path).mode == "L"
    back = read_image(path)
    assert back.dtype == np.float32 and back.shape == (20, 30)
    np.testing.assert_array_equal(np.rint(back * 255).astype(int), levels)


def test_png_16bit_round_trip_keeps_precision(tmp_path: Path) -> None:
    cfg = ImageConfig(size=32, low=0.0, high=1.0)
    unit = np.random.default_rng(4).random((48, 64))
    path = save_png(unit, tmp_path / "b.png", cfg, bits=16)
    assert Image.open(path).mode.startswith("I;16")
    back = read_image(path)
    assert np.abs(back - unit).max() <= 0.5 / 65535 + 1e-7
    assert len(np.unique(back)) > 256  # more levels than 8 bits can hold


def test_save_png_writes_text_chunks_and_rejects_bad_input(tmp_path: Path) -> None:
    cfg = ImageConfig(size=8)
    img = torch.zeros(1, 8, 8)
    path = save_png(img, tmp_path / "sub" / "c.png", cfg, text={"prompt": "No acute disease.", "seed": "7"})
    assert Image.open(path).text == {"prompt": "No acute disease.", "seed": "7"}
    with pytest.raises(ConfigError, match="bits"):
        save_png(img, tmp_path / "d.png", cfg, bits=12)
    with pytest.raises(DataError, match="NaN"):
        save_png(torch.full((8, 8), float("nan")), tmp_path / "e.png", cfg)
    with pytest.raises(DataError, match="shape"):
        save_png(torch.zeros(3, 8, 8), tmp_path / "f.png", cfg)


def test_save_png_clips_out_of_range_values(tmp_path: Path) -> None:
    cfg = ImageConfig(size=2)
    path = save_png(np.array([[-3.0, 3.0], [-1.0, 1.0]]), tmp_path / "g.png", cfg)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[0, 255], [0, 255]])


def test_rgb_jpeg_becomes_luma_gray(tmp_path: Path) -> None:
    gray = (np.tile(np.linspace(0, 255, 64), (48, 1))).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)  # 3 identical channels, like the pediatric set
    path = tmp_path / "x.jpeg"
    Image.fromarray(rgb).save(path, quality=100)
    out = read_image(path)
    assert out.shape == (48, 64)
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    assert np.abs(out - expected).max() <= 1 / 255 + 1e-6
    # a colored JPEG uses luma weights, not a single channel
    colored = np.zeros((16, 16, 3), dtype=np.uint8)
    colored[..., 1] = 200
    Image.fromarray(colored).save(tmp_path / "green.jpg", quality=100)
    assert read_image(tmp_path / "green.jpg").mean() == pytest.approx(0.587 * 200 / 255, abs=0.02)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
SLOPE, INTERCEPT, CENTER, WIDTH = 2.0, -100.0, 900.0, 1000.0


def _expected_window(stored: np.ndarray) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window on rescaled values, as a [0, 1] fraction."""
    values = stored * SLOPE + INTERCEPT
    return np.clip((values - (CENTER - 0.5)) / (WIDTH - 1) + 0.5, 0.0, 1.0)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_window_and_inversion(tmp_path: Path, photometric: str) -> None:
    stored = np.tile(np.arange(0, 1100, 10, dtype=np.uint16), (4, 1))  # (4, 110) ramp
    path = _write_dicom(
        tmp_path / "ramp.dcm", stored, photometric,
        RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, WindowCenter=CENTER, WindowWidth=WIDTH,
    )
    out = read_image(path)
    expected = _expected_window(stored.astype(np.float64))
    if photometric == "MONOCHROME1":  # high stored values are dark: invert so dense is bright
        expected = 1.0 - expected
    assert out.dtype == np.float32 and out.shape == stored.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out == 0).any() and (out == 1).any()  # the window clips at both ends


@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID"])
def test_dicom_window_wider_than_image_is_not_stretched(tmp_path: Path, function: str) -> None:
    stored = np.array([[400, 450, 500, 550]], dtype=np.uint16)  # rescaled: 700..1000, inside the window
    path = _write_dicom(
        tmp_path / "narrow.dcm", stored, VOILUTFunction=function,
        RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, WindowCenter=CENTER, WindowWidth=WIDTH,
    )
    out = read_image(path)
    values = stored * SLOPE + INTERCEPT
    if function == "LINEAR":
        expected = _expected_window(stored.astype(np.float64))
    else:  # PS3.3 C.11.2.1.3.1
        expected = 1.0 / (1.0 + np.exp(-4.0 * (values - CENTER) / WIDTH))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert 0.1 < out.min() and out.max() < 0.9


def test_dicom_without_window_uses_full_range_and_keeps_16bit_precision(tmp_path: Path) -> None:
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64) + 1000
    out = read_image(_write_dicom(tmp_path / "plain.dcm", stored))
    assert out.min() == 0.0 and out.max() == 1.0
    assert len(np.unique(out)) == 4096  # not squeezed through 8 bits
    inverted = read_image(_write_dicom(tmp_path / "inv.dcm", stored, "MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1.0 - out, atol=1e-6)


@pytest.mark.parametrize("lut_vr", ["US", "OW"])
def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path, lut_vr: str) -> None:
    table = np.rint(np.linspace(0, 4000, 256) ** 2 / 4000).astype(np.uint16)  # a curved LUT
    lut_item = Dataset()
    lut_item.add_new(0x00283002, "US", [256, 0, 16])  # LUT Descriptor: entries, first input, bits
    lut_item.add_new(0x00283006, lut_vr, table.tolist() if lut_vr == "US" else table.tobytes())
    stored = np.array([[0, 128, 255, 400]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[lut_item],
                        WindowCenter=10.0, WindowWidth=5.0)  # the LUT wins over the window
    out = read_image(path)
    np.testing.assert_allclose(out, [[0.0, table[128] / 4000, 1.0, 1.0]], atol=1e-6)


def test_dicom_detected_by_magic_without_suffix(tmp_path: Path) -> None:
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4)
    path = _write_dicom(tmp_path / "image.bin", stored)
    assert is_dicom(path)
    np.testing.assert_allclose(read_image(path), stored / 15.0, atol=1e-6)


def test_dicom_without_pixels_or_color_is_rejected(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "rgb.dcm", np.zeros((4, 4)), "RGB")
    with pytest.raises(ImageReadError, match="grayscale"):
        read_image(path)
    ds = Dataset()
    ds.PatientID = "x"
    ds.save_as(tmp_path / "nopix.dcm", implicit_vr=True, little_endian=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(tmp_path / "nopix.dcm")


# --------------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.png"
    with pytest.raises(ImageReadError, match="nowhere.png.*does not exist"):
        read_image(path)
    with pytest.raises(ImageReadError, match="nowhere.png"):
        file_sha1(path)


@pytest.mark.parametrize("name", ["noise.png", "noise.dcm", "noise.bin"])
def test_random_bytes_raise_image_read_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=name):
        read_image(path)


def test_truncated_png_and_unsupported_format(tmp_path: Path) -> None:
    full = save_png(np.random.default_rng(2).random((64, 64)), tmp_path / "full.png", ImageConfig(low=0.0))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(cut)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a.bmp")
    with pytest.raises(ImageReadError, match="BMP.*convert"):
        read_image(tmp_path / "a.bmp")


# --------------------------------------------------------------------------------------------
# Resize, crop, range mapping
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (32, 32), (20, 25)])
def test_resize_center_crop_shape_and_range(shape: tuple[int, int]) -> None:
    out = resize_center_crop(_ramp(*shape), 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_crop_without_resize_is_exact_center() -> None:
    img = _ramp(32, 48)
    np.testing.assert_array_equal(resize_center_crop(img, 32), img[:, 8:40])


def test_resize_never_flips_or_transposes() -> None:
    img = np.zeros((48, 64), dtype=np.float32)
    img[4:20, 10:24] = 1.0  # a bright mark in the top-left, e.g. a side marker
    out = resize_center_crop(img, 32)
    half = out.shape[0] // 2
    quadrants = [out[:half, :half], out[:half, half:], out[half:, :half], out[half:, half:]]
    assert int(np.argmax([q.mean() for q in quadrants])) == 0  # still top-left
    assert out[:, :half].mean() > 3 * out[:, half:].mean()


def test_lanczos_ringing_is_clipped_and_precision_kept() -> None:
    step = np.zeros((64, 64), dtype=np.float32)
    step[:, 32:] = 1.0
    out = resize_center_crop(step, 24)
    assert out.min() >= 0.0 and out.max() <= 1.0
    smooth = resize_center_crop(_ramp(400, 400), 100)
    assert len(np.unique(smooth)) > 256  # float resize, not 8-bit


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="2-D"):
        resize_center_crop(np.zeros((3, 8, 8)), 4)
    with pytest.raises(ConfigError, match="positive"):
        resize_center_crop(np.zeros((8, 8)), 0)


def test_unit_range_maps_are_inverse() -> None:
    cfg = ImageConfig(low=-1.0, high=1.0)
    x = torch.tensor([0.0, 0.25, 1.0])
    np.testing.assert_allclose(from_unit_range(x, cfg), [-1.0, -0.5, 1.0])
    np.testing.assert_allclose(to_unit_range(from_unit_range(x, cfg), cfg), x)


def test_load_image_returns_model_tensor(tmp_path: Path) -> None:
    path = save_png(_ramp(40, 60), tmp_path / "r.png", ImageConfig(low=0.0, high=1.0), bits=16)
    out = load_image(path, ImageConfig(size=32, low=-1.0, high=1.0))
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    unit = resize_center_crop(read_image(path), 32)
    np.testing.assert_allclose(out[0].numpy(), unit * 2 - 1, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Hashing and the shared sets
# --------------------------------------------------------------------------------------------
def test_file_sha1_streams_and_detects_changes(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    b.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_sha1(a, chunk_bytes=333) == file_sha1(a) == hashlib.sha1(data).hexdigest()
    assert file_sha1(b) != file_sha1(a)


@pytest.mark.shared_data
def test_real_covid_png(shared_data: Path) -> None:
    root = shared_data / "covid-cxr-256"
    rel = pd.read_csv(root / "metadata.csv")["image"].iloc[0]
    out = read_image(root / rel)
    assert out.shape == (256, 256) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(Image.open(root / rel), dtype=np.float32) / 255)
    assert out.std() > 0.05
    tensor = load_image(root / rel, ImageConfig(size=32))
    assert tensor.shape == (1, 32, 32) and -1.0 <= tensor.min() < tensor.max() <= 1.0


@pytest.mark.shared_data
def test_real_pediatric_jpeg(shared_data: Path) -> None:
    root = shared_data / "pediatric-pneumonia-224"
    rel = pd.read_csv(root / "metadata.csv")["image"].iloc[0]
    raw = np.asarray(Image.open(root / rel))
    assert raw.ndim == 3  # stored as RGB
    out = read_image(root / rel)
    assert out.shape == (224, 224)
    np.testing.assert_allclose(out, raw[..., 0] / 255.0, atol=1e-5)  # identical channels
