"""Report text: de-identification clean-up, MIMIC/IU section parsing, safe reading, the IU archive reader."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cxrgen.data.iu import IUReport, iu_report_text, read_iu_archive
from cxrgen.data.reports import clean_text, parse_sections, read_report_file
from cxrgen.errors import DataError, ReportError

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough, evaluate for
 pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 There is a small left pleural effusion.   No pneumothorax.
 Heart size is normal.

 IMPRESSION:

 Small left effusion.
"""


def test_clean_text_removes_deid_marks_and_collapses_whitespace() -> None:
    assert clean_text("There are no XXXX of a pleural\n\n effusion.") == "There are no of a pleural effusion."
    assert clean_text("  Seen by Dr. ___ on ___.  ") == "Seen by Dr. on."
    assert clean_text("Normal chest x-XXXX.") == "Normal chest x-ray."
    assert clean_text("for further evaluation.. XXXX was notified at XXXXPM") == (
        "for further evaluation. was notified at PM")
    assert clean_text("Mixed case Xray is kept") == "Mixed case Xray is kept"


def test_parse_sections_mimic_headers() -> None:
    sections = parse_sections(MIMIC_REPORT)
    assert sections == {
        "examination": "CHEST (PA AND LAT)",
        "indication": "F with cough, evaluate for pneumonia.",
        "technique": "Chest PA and lateral",
        "findings": "There is a small left pleural effusion. No pneumothorax. Heart size is normal.",
        "impression": "Small left effusion.",
    }
    assert "preamble" not in sections  # "FINAL REPORT" alone is dropped; empty COMPARISON too


def test_parse_sections_aliases_case_and_preamble() -> None:
    text = "Wet read by someone.\nHistory: fever\nfindings and impression: No acute process.\nConclusion: Normal."
    sections = parse_sections(text)
    assert sections["preamble"] == "Wet read by someone."
    assert sections["history"] == "fever"
    # combined header and CONCLUSION both count as impression (MIMIC section_parser convention)
    assert sections["impression"] == "No acute process. Normal."


def test_parse_sections_header_only_at_line_start() -> None:
    sections = parse_sections("FINDINGS: The findings: as before. Note: stable.\nIMPRESSION: none")
    assert sections["findings"] == "The findings: as before. Note: stable."
    assert sections["impression"] == "none"


def test_parse_sections_without_headers_goes_to_preamble() -> None:
    assert parse_sections("Lungs are clear.") == {"preamble": "Lungs are clear."}


def test_parse_sections_accepts_iu_dict() -> None:
    sections = parse_sections({"FINDINGS": "No XXXX effusion.", "IMPRESSION": None, "comparison": ""})
    assert sections == {"findings": "No effusion."}


def test_read_report_file(tmp_path: Path) -> None:
    good = tmp_path / "r.txt"
    good.write_text("FINDINGS: clear.", encoding="utf-8")
    assert read_report_file(good) == "FINDINGS: clear."
    with pytest.raises(ReportError, match="does not exist"):
        read_report_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ReportError, match="empty"):
        read_report_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ReportError, match="UTF-8"):
        read_report_file(latin)


def _xml(uid: str, findings: str, mesh: list[str], images: list[str]) -> bytes:
    majors = "".join(f"<major>{m}</major>" for m in mesh)
    parents = "".join(f'<parentImage id="{i}"><caption>x</caption></parentImage>' for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/><MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText></Abstract>'
            f'</Article></MedlineCitation><MeSH>{majors}</MeSH>{parents}</eCitation>').encode()


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_read_iu_archive_small(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = _tgz(tmp_path / "r.tgz", {
        "ecgen-radiology/10.xml": _xml("CXR10", "Small XXXX effusion.", ["Pleural Effusion/left"], ["A", "B"]),
        "ecgen-radiology/2.xml": _xml("CXR2", "Clear.", ["normal"], ["C"]),
        "ecgen-radiology/3.xml": b"<not closed",
    })
    reports = read_iu_archive(archive)
    assert [r.uid for r in reports] == ["CXR2", "CXR10"]  # ordered by file number
    first = reports[1]
    assert first.sections["findings"] == "Small effusion."
    assert first.sections["indication"] == ""
    assert first.mesh_major == ("Pleural Effusion/left",)
    assert first.image_ids == ("A", "B")
    assert "1 unparseable" in caplog.text
    assert iu_report_text(first) == "FINDINGS: Small effusion.\nIMPRESSION: Normal chest x-ray."


def test_iu_report_text_skips_empty_sections() -> None:
    r = IUReport(uid="X", sections={"findings": "", "impression": "No acute disease."}, mesh_major=(), image_ids=())
    assert iu_report_text(r) == "IMPRESSION: No acute disease."


def test_read_iu_archive_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_iu_archive(tmp_path / "none.tgz")
    corrupt = tmp_path / "bad.tgz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot be read"):
        read_iu_archive(corrupt)
    with pytest.raises(DataError, match="no report XML"):
        read_iu_archive(_tgz(tmp_path / "empty.tgz", {"readme.txt": b"hi"}))


@pytest.mark.shared_data
def test_read_real_iu_archive(iu_archive: Path) -> None:
    reports = read_iu_archive(iu_archive)
    assert len(reports) == 3955
    assert sum(len(r.image_ids) for r in reports) == 7470
    assert not any("XXXX" in t for r in reports for t in r.sections.values())
    assert all(set(r.sections) == {"comparison", "indication", "findings", "impression"} for r in reports)
