"""Pipelines beyond report -> CXR: any-to-any generation between the frontal view, the lateral view and the report."""

from cxrgen.pipelines.any_to_any import MultiViewOutput, MultiViewPipeline
from cxrgen.pipelines.codi import CodiPipeline
from cxrgen.pipelines.loader import load_multiview_pipeline
from cxrgen.pipelines.modes import ISSUE_MODES, Mode, all_modes

__all__ = ["ISSUE_MODES", "CodiPipeline", "Mode", "MultiViewOutput", "MultiViewPipeline", "all_modes",
           "load_multiview_pipeline"]
