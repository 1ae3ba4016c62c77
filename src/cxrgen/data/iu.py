"""The Indiana University chest X-ray report archive (Open-i ``NLMCXR_reports.tgz``), read in place.

Demner-Fushman et al., "Preparing a collection of radiology examinations for distribution and
retrieval", JAMIA 2016. Each ``ecgen-radiology/N.xml`` holds the report sections, the MeSH terms
and the ids of the study's images. The archive is read with ``tarfile`` without extracting it.
"""

from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

from cxrgen.data.reports import clean_text
from cxrgen.errors import DataError

log = logging.getLogger(__name__)

#: The report sections of the IU XML (``<AbstractText Label=...>``), lower case.
IU_SECTIONS: tuple[str, ...] = ("comparison", "indication", "findings", "impression")
#: The sections that describe the image, in the order they are written out as text.
IU_TEXT_SECTIONS: tuple[str, ...] = ("findings", "impression")

_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class IUReport:
    """One IU X-ray report: cleaned sections, MeSH major terms (as written) and image ids."""

    uid: str
    sections: dict[str, str]
    mesh_major: tuple[str, ...]
    image_ids: tuple[str, ...]


def _parse_report(data: bytes, name: str) -> IUReport:
    """Parse one report XML document; raises ET.ParseError or ValueError when unusable."""
    root = ET.fromstring(data)
    uid_el = root.find("uId")
    uid = uid_el.get("id") if uid_el is not None else None
    if not uid:
        raise ValueError(f"{name}: no <uId id=...>")
    sections = dict.fromkeys(IU_SECTIONS, "")
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().lower()
        if label in sections:
            sections[label] = clean_text("".join(el.itertext()))
    mesh = tuple(t for el in root.iter("major") if (t := (el.text or "").strip()))
    images = tuple(i for el in root.iter("parentImage") if (i := el.get("id")))
    return IUReport(uid=uid, sections=sections, mesh_major=mesh, image_ids=images)


def _member_order(member: tarfile.TarInfo) -> tuple[int, str]:
    m = _NUMBER.search(Path(member.name).stem)
    return (int(m.group(1)) if m else -1, member.name)


def read_iu_archive(path: str | Path) -> list[IUReport]:
    """Read every report of the IU archive, ordered by file number; unparseable files are counted and logged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"IU report archive {path} does not exist; point to NLMCXR_reports.tgz "
            "(e.g. /work/shared/data/iu-xray-reports/NLMCXR_reports.tgz)"
        )
    reports: list[IUReport] = []
    bad: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                             key=_member_order)
            for member in members:
                handle = tar.extractfile(member)
                try:
                    reports.append(_parse_report(handle.read() if handle else b"", member.name))
                except (ET.ParseError, ValueError) as exc:
                    bad.append(member.name)
                    log.debug("skipping %s: %s", member.name, exc)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"IU report archive {path} cannot be read ({exc}); download NLMCXR_reports.tgz again"
        ) from exc
    if bad:
        log.warning("IU archive %s: skipped %d unparseable report file(s), e.g. %s", path, len(bad), bad[0])
    if not reports:
        raise DataError(f"IU report archive {path} holds no report XML files; is it NLMCXR_reports.tgz?")
    log.info("IU archive %s: %d reports", path, len(reports))
    return reports


def iu_report_text(report: IUReport) -> str:
    """The report as sectioned text, e.g. "FINDINGS: ...\\nIMPRESSION: ..." (empty sections left out)."""
    return "\n".join(f"{key.upper()}: {report.sections[key]}"
                     for key in IU_TEXT_SECTIONS if report.sections.get(key))
