"""Bad input through the CLI as a user gives it: a one-line error (exit 2) or a correct result, never a traceback.

Each test names the defect of issue 21 it pins down; the model is a tiny random pipeline saved to disk.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from cli_helpers import one_error_line
from PIL import Image
from tiny_models import tiny_pipeline
from train_helpers import write_config

from cxrgen.cli import main
from cxrgen.config import SamplingConfig, TrainConfig, apply_overrides, load_config
from cxrgen.dicom import read_synthetic_metadata
from cxrgen.errors import ConfigError
from cxrgen.pipeline import CXRPipeline

RECORD_NAME = "weights_sha256.json"  # cxrgen.integrity.RECORD_NAME, spelled out: the file name is the contract
SAMPLING = SamplingConfig(sampler="ddim", steps=2, guidance_scale=3.0)
PROMPT = "small left pleural effusion"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    return tiny_pipeline(root, SAMPLING).save_pretrained(root / "model")


def _generate(model: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), "-n", "2", "--seed", "3", "--no-progress",
                 "--device", "cpu", *extra])




# --- 4. float spellings -------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["1e-4", "1E-4", "1.e-4", "0.0001", "1_0e-5"])
def test_every_python_float_spelling_is_accepted(spelling: str, tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(f"lr: {spelling}\n")
    assert load_config(TrainConfig, path).lr == pytest.approx(float(spelling))
    assert apply_overrides(TrainConfig(), [f"lr={spelling}"]).lr == pytest.approx(float(spelling))


def test_a_word_for_a_float_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="lr"):
        apply_overrides(TrainConfig(), ["lr=fast"])


# --- 5. lr=-1 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_train_rejects_a_bad_learning_rate_with_one_line(value: str, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    assert main(["train", str(config), "--set", f"lr={value}", "--out", str(tmp_path / "run")]) == 2
    assert "lr=" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# --- 6. guidance nan / inf ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_generate_rejects_non_finite_guidance(value: str, model_dir: Path, tmp_path: Path, capsys) -> None:
    assert _generate(model_dir, tmp_path / "out", PROMPT, f"--guidance={value}") == 2
    assert "guidance" in one_error_line(capsys)
    with pytest.raises(ConfigError, match="finite"):
        SamplingConfig(guidance_scale=float(value))


# --- 3. labeler on non-English and blank text -----------------------------------------------------
@pytest.mark.parametrize("text", ["Derrame pleural derecho grande.", "Pas de pneumothorax.",
                                  "Kein Pleuraerguss, Herz normal gross."])
def test_label_refuses_text_that_is_not_english(text: str, capsys) -> None:
    assert main(["label", text]) == 2
    assert "English" in one_error_line(capsys)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_label_blank_text_is_one_error(text: str, capsys) -> None:
    assert main(["label", text]) == 2
    assert "give report text" in one_error_line(capsys)


def test_label_english_still_labels(capsys) -> None:
    assert main(["label", "Large right pleural effusion. No pneumothorax."]) == 0
    out = capsys.readouterr().out
    assert '"Pleural Effusion": 1.0' in out and '"Pneumothorax": 0.0' in out


# --- 5. prompts that are not UTF-8 ------------------------------------------------------------------
def test_prompts_csv_that_is_not_utf8_names_the_file(model_dir: Path, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "prompts.csv"
    csv.write_bytes("prompt\nDerrame pleural, cr\u00e1neo\n".encode("latin-1"))
    assert _generate(model_dir, tmp_path / "out", "--prompts", str(csv)) == 2
    line = one_error_line(capsys)
    assert str(csv) in line and "UTF-8" in line


def test_prompt_argument_with_raw_bytes_is_an_error(model_dir: Path, tmp_path: Path, capsys) -> None:
    raw = os.fsdecode(b"left effusion \xff\xfe")  # what Python makes of undecodable argv bytes
    assert _generate(model_dir, tmp_path / "out", raw) == 2
    assert "UTF-8" in one_error_line(capsys)


# --- 6. a blank line in a prompts CSV -------------------------------------------------------------
def test_blank_line_in_prompts_csv_is_an_error_naming_the_line(model_dir: Path, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\nleft effusion\n\nright effusion\n")
    assert _generate(model_dir, tmp_path / "out", "--prompts", str(csv)) == 2
    line = one_error_line(capsys)
    assert "line 3" in line and str(csv) in line
    assert not list((tmp_path / "out").glob("*.png"))


def test_blank_lines_at_the_end_of_a_prompts_csv_are_ignored(tmp_path: Path) -> None:
    from cxrgen.generate import read_prompts

    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\nleft effusion\nright effusion\n\n\n")
    assert read_prompts(csv) == ["left effusion", "right effusion"]


# --- 5. resuming over a truncated or empty PNG ----------------------------------------------------
@pytest.mark.parametrize("keep_bytes", [0, 100])
def test_resume_resamples_a_truncated_png_and_names_it(keep_bytes: int, model_dir: Path, tmp_path: Path,
                                                       capsys, caplog) -> None:
    out = tmp_path / "out"
    assert _generate(model_dir, out, PROMPT) == 0
    good = (out / "00000_001.png").read_bytes()
    (out / "00000_001.png").write_bytes(good[:keep_bytes])
    assert _generate(model_dir, out, PROMPT) == 0
    assert (out / "00000_001.png").read_bytes() == good
    assert "00000_001.png" in caplog.text and "Traceback" not in capsys.readouterr().err


def test_resume_resamples_a_truncated_dicom(model_dir: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    assert _generate(model_dir, out, PROMPT, "--dicom") == 0
    path = out / "00000_000.dcm"
    pixels = pydicom.dcmread(path).pixel_array
    path.write_bytes(path.read_bytes()[:-500])  # pixel data cut short
    assert _generate(model_dir, out, PROMPT, "--dicom") == 0
    assert (pydicom.dcmread(path).pixel_array == pixels).all()  # same seed, same pixels (UIDs are new)
    assert "00000_000.dcm" in caplog.text


# --- 6. stale temp files of a killed run -----------------------------------------------------------
def test_stale_temp_files_are_removed_on_the_next_run(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".00000_000.png.424242.tmp"
    stale.write_bytes(b"")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert _generate(model_dir, out, PROMPT) == 0
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["00000_000.png", "00000_001.png"]


# --- 5. Ctrl-C during generate ----------------------------------------------------------------------
def test_ctrl_c_during_generate_exits_130_with_one_line(model_dir: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CXRPipeline, "sample", interrupted)
    assert _generate(model_dir, tmp_path / "out", PROMPT) == 130
    assert "interrupted" in one_error_line(capsys)


def test_an_os_failure_mid_run_is_one_line_with_exit_1(model_dir: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cxrgen.generate.save_png", disk_full)
    assert _generate(model_dir, tmp_path / "out", PROMPT) == 1
    assert "No space left on device" in one_error_line(capsys)
    assert not list((tmp_path / "out").iterdir())  # no temp file left behind


# --- 6. DICOM ImageComments over its limit ------------------------------------------------------------
def test_long_prompt_fits_dicom_image_comments_and_is_kept_whole(model_dir: Path, tmp_path: Path) -> None:
    prompt = "small left pleural effusion, " * 500  # ~14,500 characters
    out = tmp_path / "out"
    assert _generate(model_dir, out, prompt, "--dicom", "-n", "1") == 0
    path = out / "00000_000.dcm"
    ds = pydicom.dcmread(path)
    assert len(str(ds.ImageComments)) <= 10240  # LT: PS3.5 6.2
    assert read_synthetic_metadata(path)["prompt"] == prompt


# --- 5./6. corrupt weights and the sha256 record ---------------------------------------------------------
def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def test_save_records_the_sha256_of_every_weights_file(model_dir: Path) -> None:
    import json

    record = json.loads((model_dir / RECORD_NAME).read_text())
    on_disk = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.safetensors")}
    assert set(record["files"]) == on_disk and len(on_disk) >= 2


def test_truncated_weights_fail_with_one_line_naming_the_file(model_dir: Path, tmp_path: Path, capsys) -> None:
    model = _copy(model_dir, tmp_path)
    (model / RECORD_NAME).unlink()  # no record: the safetensors reader itself must fail clearly
    weights = model / "denoiser" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert _generate(model, tmp_path / "out", PROMPT) == 2
    line = one_error_line(capsys)
    assert "denoiser/diffusion_pytorch_model.safetensors" in line and "corrupt" in line


def test_changed_weights_fail_the_sha256_check(model_dir: Path, tmp_path: Path, capsys) -> None:
    model = _copy(model_dir, tmp_path)
    weights = model / "autoencoder" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last weight: same size, still a valid file
    weights.write_bytes(bytes(data))
    assert _generate(model, tmp_path / "out", PROMPT) == 2
    line = one_error_line(capsys)
    assert "autoencoder/diffusion_pytorch_model.safetensors" in line and "sha256" in line


def test_a_model_without_a_record_still_loads(model_dir: Path, tmp_path: Path, caplog) -> None:
    model = _copy(model_dir, tmp_path)
    (model / RECORD_NAME).unlink()
    assert _generate(model, tmp_path / "out", PROMPT) == 0
    assert RECORD_NAME in caplog.text


def test_the_shipped_default_model_verifies() -> None:
    from cxrgen.generate import DEFAULT_MODEL
    from cxrgen.integrity import verify_weights

    assert (DEFAULT_MODEL / RECORD_NAME).is_file()
    assert verify_weights(DEFAULT_MODEL)  # every recorded file checked


def test_png_pixels_are_within_one_level_across_batch_sizes(model_dir: Path, tmp_path: Path) -> None:
    """The documented promise (docs/failure_behaviour.md): batching changes a pixel by at most one grey level."""
    import numpy as np

    assert _generate(model_dir, tmp_path / "b1", PROMPT, "--batch-size", "1") == 0
    assert _generate(model_dir, tmp_path / "b2", PROMPT, "--batch-size", "2") == 0
    for name in ("00000_000.png", "00000_001.png"):
        a = np.asarray(Image.open(tmp_path / "b1" / name), dtype=np.int32)
        b = np.asarray(Image.open(tmp_path / "b2" / name), dtype=np.int32)
        assert np.abs(a - b).max() <= 1
