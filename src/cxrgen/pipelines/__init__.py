"""Pipelines beyond report -> CXR: any-to-any generation between the frontal view, the lateral view and the report."""

from cxrgen.pipelines.any_to_any import MultiViewOutput, MultiViewPipeline
from cxrgen.pipelines.modes import ISSUE_MODES, Mode, all_modes

__all__ = ["ISSUE_MODES", "Mode", "MultiViewOutput", "MultiViewPipeline", "all_modes"]
