"""Batch generation: PNG/DICOM metadata, resume, sharding, bad output folders, and `cxrgen generate`."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from tiny_models import PROMPTS, tiny_pipeline

import cxrgen.pipeline
from cxrgen.cli import main
from cxrgen.config import SamplingConfig
from cxrgen.data.images import read_image, to_unit_range
from cxrgen.dicom import CONVERSION_TYPE, SECONDARY_CAPTURE_SOP_CLASS, SYNTHETIC_MARKER, read_synthetic_metadata
from cxrgen.errors import ConfigError, MissingColumnsError
from cxrgen.generate import generate_images, output_name, read_prompts
from cxrgen.generate import run_generate as gen_run
from cxrgen.pipeline import CXRPipeline

SAMPLING = SamplingConfig(sampler="ddim", steps=2, guidance_scale=3.0)
SEED = 11


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> CXRPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("generate"), SAMPLING)


@contextmanager
def count_calls(pipe: CXRPipeline):
    """Count denoiser forward calls inside the block."""
    calls = []
    handle = pipe.denoiser.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def _run(pipe: CXRPipeline, out: Path, **kw) -> list[Path]:
    args = dict(n_per_prompt=3, sampling=SAMPLING, seed=SEED, model_name="tiny", batch_size=2, progress=False)
    return generate_images(pipe, PROMPTS, out, **{**args, **kw})


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_png_names_text_chunks_and_pixels(pipe: CXRPipeline, tmp_path: Path) -> None:
    paths = _run(pipe, tmp_path)
    assert [p.name for p in paths] == [output_name(p, k, "png") for p in range(2) for k in range(3)]
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    text = Image.open(paths[4]).text  # prompt 1, image 1: global index 4
    assert text["prompt"] == PROMPTS[1] and text["seed"] == str(SEED + 4)
    assert (text["sampler"], text["steps"], text["guidance_scale"]) == ("ddim", "2", "3.0")
    assert text["model"] == "tiny" and text["synthetic"] == "true"
    expected = pipe.sample([PROMPTS[1]], SAMPLING, [torch.Generator().manual_seed(SEED + 4)], progress=False)
    levels = np.rint(to_unit_range(expected.images[0, 0].double().numpy(), pipe.image_config) * 255)
    assert np.abs(_pixels(paths[4]).astype(float) - levels).max() <= 1  # batch of 2 vs alone: rounding only


def test_dicom_tags_and_pixels(pipe: CXRPipeline, tmp_path: Path) -> None:
    paths = _run(pipe, tmp_path / "dcm", fmt="dicom", n_per_prompt=1)
    png = _run(pipe, tmp_path / "png", n_per_prompt=1)
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS == ds.file_meta.MediaStorageSOPClassUID
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == CONVERSION_TYPE
    assert ds.Modality == "OT" and ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert str(ds.ImageComments).startswith(SYNTHETIC_MARKER)
    assert str(ds.PatientBirthDate) == "" and str(ds.StudyDate) == "" and "SYNTHETIC" in str(ds.PatientName)
    other = pydicom.dcmread(paths[1])
    assert len({ds.SOPInstanceUID, other.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}) == 4
    meta = read_synthetic_metadata(paths[0])
    assert meta["prompt"] == PROMPTS[0] and meta["seed"] == str(SEED) and meta["synthetic"] == "true"
    assert {"sampler", "steps", "guidance_scale", "model"} <= set(meta)
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (32, 32, 16)
    # read back through cxrgen's reader: the 16-bit levels of the same image as the PNG holds at 8 bits
    back = read_image(paths[0])
    np.testing.assert_allclose(back, ds.pixel_array / 65535.0, atol=1e-6)
    assert np.abs(back * 255 - _pixels(png[0])).max() <= 0.5 + 1e-3


def test_resume_samples_nothing_new(pipe: CXRPipeline, tmp_path: Path) -> None:
    first = _run(pipe, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    reference = first[3].read_bytes()
    with count_calls(pipe) as calls:
        again = _run(pipe, tmp_path)
    assert again == first and calls == []
    assert {p: p.stat().st_mtime_ns for p in first} == stamps
    first[3].unlink()  # a run killed after writing part of its outputs
    with count_calls(pipe) as calls:
        _run(pipe, tmp_path)
    assert len(calls) == SAMPLING.steps  # one batch re-sampled, one guided call per step
    assert first[3].read_bytes() == reference


def test_resume_refuses_files_of_other_settings(pipe: CXRPipeline, tmp_path: Path) -> None:
    _run(pipe, tmp_path, n_per_prompt=1)
    with count_calls(pipe) as calls, pytest.raises(ConfigError, match="steps"):
        _run(pipe, tmp_path, n_per_prompt=1, sampling=SamplingConfig(sampler="ddim", steps=3))
    assert calls == []


def test_shards_split_the_work_and_match_one_process(pipe: CXRPipeline, tmp_path: Path) -> None:
    single = _run(pipe, tmp_path / "one", process_index=0, num_processes=1)
    shards = [_run(pipe, tmp_path / "two", process_index=i, num_processes=2) for i in range(2)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert sorted(p.name for p in shards[0] + shards[1]) == sorted(p.name for p in single)
    for path in single:
        assert (tmp_path / "two" / path.name).read_bytes() == path.read_bytes()  # bit for bit
    with pytest.raises(ConfigError, match="process_index"):
        _run(pipe, tmp_path / "bad", process_index=2, num_processes=2)


def test_unwritable_output_fails_before_sampling(pipe: CXRPipeline, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with count_calls(pipe) as calls, pytest.raises(ConfigError, match="writable"):
        _run(pipe, blocker / "out")
    assert calls == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_fails_before_sampling(pipe: CXRPipeline, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with count_calls(pipe) as calls, pytest.raises(ConfigError, match="writable"):
        _run(pipe, locked)
    assert calls == []


def test_empty_prompt_fails_before_sampling(pipe: CXRPipeline, tmp_path: Path) -> None:
    with count_calls(pipe) as calls, pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate_images(pipe, ["effusion", " "], tmp_path, sampling=SAMPLING, progress=False)
    assert calls == [] and not list(tmp_path.iterdir())


def test_read_prompts(tmp_path: Path) -> None:
    good = tmp_path / "p.csv"
    good.write_text('id,prompt\n1,"left effusion, small"\n2,no acute disease\n')
    assert read_prompts(good) == ["left effusion, small", "no acute disease"]
    bad = tmp_path / "q.csv"
    bad.write_text("id,text\n1,effusion\n")
    with pytest.raises(MissingColumnsError, match="prompt"):
        read_prompts(bad)


# --- CLI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(pipe: CXRPipeline, tmp_path_factory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("cli") / "model")


def test_cli_generate_png_and_dicom_batch(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["--steps", "2", "--sampler", "euler", "--guidance", "2", "--seed", "5", "--model", str(model_dir),
            "--no-progress"]
    assert main(["generate", "small left pleural effusion", "-n", "2", "--out", str(out), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_000.png", "00000_001.png"]
    text = Image.open(out / "00000_001.png").text
    assert (text["seed"], text["sampler"], text["steps"], text["guidance_scale"]) == ("6", "euler", "2", "2.0")
    assert text["model"] == str(model_dir.resolve())
    assert str(out.resolve()) in capsys.readouterr().out
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\nno acute disease\nright lower lobe opacity\n")
    dcm = tmp_path / "dcm"
    assert main(["generate", "--prompts", str(csv), "--dicom", "--out", str(dcm), *args]) == 0
    assert sorted(p.name for p in dcm.iterdir()) == ["00000_000.dcm", "00001_000.dcm"]  # n from the sampling settings
    assert read_synthetic_metadata(dcm / "00001_000.dcm")["prompt"] == "right lower lobe opacity"


def test_cli_several_prompts_and_guidance_scale_flag(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    assert main(["generate", "left effusion", "clear lungs", "--guidance-scale", "1.5", "--steps", "1", "-n", "1",
                 "--model", str(model_dir), "--out", str(out), "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000_000.png", "00001_000.png"]
    assert [Image.open(out / n).text["prompt"] for n in names] == ["left effusion", "clear lungs"]
    assert Image.open(out / names[0]).text["guidance_scale"] == "1.5"
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nx\n")
    with pytest.raises(ConfigError, match="not both"):
        gen_run(["left effusion"], tmp_path / "o", model=str(model_dir), prompts_file=csv)


def test_cli_errors(model_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cxrgen.pipeline, "DEFAULT_MODEL", tmp_path / "no-default")
    assert main(["generate", "effusion", "--out", str(tmp_path / "o")]) == 2
    assert "--model DIR" in capsys.readouterr().err
    csv = tmp_path / "p.csv"
    csv.write_text("text\neffusion\n")
    assert main(["generate", "--prompts", str(csv), "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "'prompt' column" in capsys.readouterr().err
    assert main(["generate", "", "--model", str(model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err
