"""The demo's logic without a browser: report bounds, request limits, the labeler panel, PNG/DICOM files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from tiny_models import tiny_pipeline

from cxrgen.config import SamplingConfig
from cxrgen.dicom import CONVERSION_TYPE, read_synthetic_metadata
from cxrgen.errors import ConfigError, CxrgenError, ReportError
from cxrgen.serve.core import (
    EXAMPLES,
    SYNTHETIC_CAPTION,
    DemoLimits,
    ModelLoader,
    bound_report,
    labeler_markdown,
    labeler_reading,
    page_defaults,
    request_settings,
    status_markdown,
)

LIMITS = DemoLimits(max_report_chars=2000, max_images=4, max_steps=50)
DEFAULTS = SamplingConfig(sampler="ddim", steps=3, guidance_scale=3.0)


# --- report bounds ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   \n\t ", None])
def test_empty_report_is_refused_with_a_clear_message(text) -> None:
    with pytest.raises(ReportError, match="report is empty"):
        bound_report(text, 100)


def test_short_report_is_kept_whole_without_warning() -> None:
    assert bound_report("  Small left pleural effusion.  ", 100) == ("Small left pleural effusion.", None)


def test_long_report_is_cut_at_a_word_with_a_warning() -> None:
    text = ("Large right pleural effusion. " * 700)[:20_000]
    cut, warning = bound_report(text, 2000)
    assert 1000 < len(cut) <= 2000 and text.startswith(cut)
    assert cut.endswith("effusion.")  # at the end of a sentence, not mid-word
    assert "20,000" in warning and f"{len(cut):,}" in warning and "2,000" in warning


def test_long_report_without_spaces_is_cut_at_the_limit() -> None:
    cut, warning = bound_report("x" * 5000, 2000)
    assert cut == "x" * 2000 and warning


# --- request limits ---------------------------------------------------------------------------
def test_request_settings_apply_the_page_values() -> None:
    cfg = request_settings(DEFAULTS, LIMITS, "dpm++", 7.0, 2.5, 42.0, 3.0)
    assert cfg == dataclasses.replace(DEFAULTS, sampler="dpm++", steps=7, guidance_scale=2.5, seed=42,
                                      num_images_per_prompt=3)


@pytest.mark.parametrize("field, args, message", [
    ("images", ("ddim", 3, 3.0, 0, 5), "Number of images must be between 1 and 4"),
    ("images", ("ddim", 3, 3.0, 0, 0), "Number of images must be between 1 and 4"),
    ("steps", ("ddim", 500, 3.0, 0, 1), "Steps must be between 1 and 50"),
    ("guidance", ("ddim", 3, 99.0, 0, 1), "Guidance scale must be between"),
    ("seed", ("ddim", 3, 3.0, -1, 1), "Seed must be between"),
    ("seed", ("ddim", 3, 3.0, None, 1), "Seed must be between"),
    ("fraction", ("ddim", 3.5, 3.0, 0, 1), "Steps must be a whole number"),
    ("sampler", ("magic", 3, 3.0, 0, 1), "Unknown sampler 'magic'"),
])  # fmt: skip
def test_request_outside_the_limits_says_the_bound(field, args, message) -> None:
    with pytest.raises(ConfigError, match=message):
        request_settings(DEFAULTS, LIMITS, *args)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        DemoLimits(max_images=0)


# --- the labeler panel ------------------------------------------------------------------------
def test_labeler_reading_gives_finding_side_and_size() -> None:
    rows = labeler_reading("Large right pleural effusion. Small left apical pneumothorax. Possible cardiomegaly.")
    by = {r["finding"]: r for r in rows}
    assert by["Pleural Effusion"] == {"finding": "Pleural Effusion", "reading": "present", "side": "right",
                                      "size": "large"}
    assert (by["Pneumothorax"]["side"], by["Pneumothorax"]["size"]) == ("left", "small")
    assert by["Cardiomegaly"]["reading"] == "uncertain"


def test_labeler_markdown_lists_findings_or_says_normal() -> None:
    panel = labeler_markdown("Moderate left pleural effusion.")
    assert "- **Pleural Effusion**: present; side: left; size: moderate" in panel
    assert "No finding" in labeler_markdown("The lungs are clear. No pleural effusion.")
    assert "Pleural Effusion" not in labeler_markdown("The lungs are clear. No pleural effusion.")


def test_examples_read_as_their_labels_say() -> None:
    readings = {label: {r["finding"]: r for r in labeler_reading(text)} for label, text in EXAMPLES}
    assert set(readings["normal"]) == {"No Finding"}
    assert (readings["effusion, large right"]["Pleural Effusion"]["side"],
            readings["effusion, large right"]["Pleural Effusion"]["size"]) == ("right", "large")
    assert (readings["effusion, small left"]["Pleural Effusion"]["side"],
            readings["effusion, small left"]["Pleural Effusion"]["size"]) == ("left", "small")
    assert readings["pneumothorax"]["Pneumothorax"]["side"] == "left"
    assert "Cardiomegaly" in readings["cardiomegaly"]
    assert "Pneumonia" in readings["pediatric"]


# --- files and the model adapter (tiny random model) ------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    pipe = tiny_pipeline(root, DEFAULTS)
    return pipe.save_pretrained(root / "model")


@pytest.fixture(scope="module")
def demo_model(model_dir: Path):
    return ModelLoader(str(model_dir)).get(timeout=120)


def test_page_defaults_come_from_the_model_folder(model_dir: Path, tmp_path: Path) -> None:
    assert page_defaults(str(model_dir)) == DEFAULTS
    index = json.loads((model_dir / "model_index.json").read_text())
    index["sampling"]["steps"] = 9
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert page_defaults(str(tmp_path)).steps == 9
    assert page_defaults(str(tmp_path / "empty")) == SamplingConfig()  # no index: the class defaults
    assert page_defaults("owner/hub-model") == SamplingConfig()  # not local: the class defaults


def test_loader_of_a_missing_model_raises_a_cxrgen_error(tmp_path: Path) -> None:
    with pytest.raises(CxrgenError, match="nowhere"):  # the error names the model it could not load
        ModelLoader(str(tmp_path / "nowhere")).get(timeout=60)


def test_generated_files_are_marked_synthetic_in_png_and_dicom(demo_model, tmp_path: Path) -> None:
    from cxrgen.serve.model import generate_files

    settings = dataclasses.replace(DEFAULTS, seed=5, num_images_per_prompt=2, steps=2)
    result = generate_files(demo_model, "small left pleural effusion", settings, tmp_path)
    assert result.seeds == [5, 6] and result.seconds > 0
    assert [p.suffix for p in result.pngs] == [".png", ".png"] and [p.suffix for p in result.dicoms] == [".dcm"] * 2
    assert all(c.startswith(SYNTHETIC_CAPTION) for c in result.captions()) and "seed 6" in result.captions()[1]
    for k, (png, dcm) in enumerate(zip(result.pngs, result.dicoms, strict=True)):
        with Image.open(png) as im:
            assert im.size == (32, 32) and im.mode == "L"
            assert im.text["synthetic"] == "true" and im.text["prompt"] == "small left pleural effusion"
            assert im.text["seed"] == str(5 + k) and im.text["steps"] == "2"
            png_pixels = np.asarray(im, dtype=np.float64) / 255
        ds = pydicom.dcmread(dcm)
        assert ds.ConversionType == CONVERSION_TYPE and (ds.Rows, ds.Columns) == (32, 32)
        assert read_synthetic_metadata(dcm)["seed"] == str(5 + k)
        np.testing.assert_allclose(ds.pixel_array / 65535, png_pixels, atol=1 / 255)  # the same image
    assert "in **" in status_markdown(result, settings) and "seeds 5–6" in status_markdown(result, settings)


def test_image_k_depends_only_on_seed_plus_k(demo_model, tmp_path: Path) -> None:
    from cxrgen.serve.model import generate_files

    two = generate_files(demo_model, "small left pleural effusion",
                         dataclasses.replace(DEFAULTS, seed=5, num_images_per_prompt=2, steps=2), tmp_path / "a")
    one = generate_files(demo_model, "small left pleural effusion",
                         dataclasses.replace(DEFAULTS, seed=6, num_images_per_prompt=1, steps=2), tmp_path / "b")
    with Image.open(two.pngs[1]) as a, Image.open(one.pngs[0]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with Image.open(two.pngs[0]) as a, Image.open(one.pngs[0]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


# --- the page's handler (Gradio, no browser) --------------------------------------------------
@pytest.fixture
def handler(model_dir: Path, tmp_path: Path):
    pytest.importorskip("gradio", reason="the demo needs the [demo] extra (gradio)")
    from cxrgen.serve.app import make_handler

    return make_handler(ModelLoader(str(model_dir)), DemoLimits(max_report_chars=200, max_images=2), tmp_path)


def test_handler_shows_a_message_not_a_traceback(handler) -> None:
    gallery, files, _, status = handler("", "ddim", 2, 3.0, 0, 1)
    assert gallery is None and files is None and "report is empty" in status
    gallery, files, _, status = handler("small left pleural effusion", "ddim", 2, 3.0, 0, 3)
    assert gallery is None and "Number of images must be between 1 and 2" in status


def test_handler_returns_captioned_images_files_and_the_reading(handler) -> None:
    gallery, files, panel, status = handler("Large right pleural effusion. " * 20, "ddim", 2, 3.0, 0, 2)
    assert [c for _, c in gallery] == [f"{SYNTHETIC_CAPTION} · seed 0", f"{SYNTHETIC_CAPTION} · seed 1"]
    assert sorted(Path(f).suffix for f in files) == [".dcm", ".dcm", ".png", ".png"]
    assert "**Pleural Effusion**: present; side: right; size: large" in panel
    assert "was cut from 600 to" in status and "Generated 2 synthetic image(s)" in status


def test_serve_with_a_missing_model_ends_with_one_line_error(tmp_path: Path, capsys) -> None:
    pytest.importorskip("gradio", reason="the demo needs the [demo] extra (gradio)")
    import socket

    from cxrgen.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--model", str(tmp_path / "nowhere"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxrgen serve: error:") and "nowhere" in err and "Traceback" not in err
