"""Procedural chest X-ray phantoms with known findings, their reports, and a pixel-based measurer."""

from cxrgen.phantom.findings import PhantomFindings, sample_findings
from cxrgen.phantom.render import render

__all__ = ["PhantomFindings", "render", "sample_findings"]
