"""Procedural chest X-ray phantoms with known findings, their reports, and a pixel-based measurer."""

from cxrgen.phantom.dataset import phantom_sample, write_phantom_set
from cxrgen.phantom.findings import PhantomFindings, sample_findings
from cxrgen.phantom.measure import MeasuredFindings, accuracy, compare, measure
from cxrgen.phantom.render import render
from cxrgen.phantom.reports import benchmark_prompts, report_for

__all__ = ["MeasuredFindings", "PhantomFindings", "accuracy", "benchmark_prompts", "compare", "measure",
           "phantom_sample", "render", "report_for", "sample_findings", "write_phantom_set"]
