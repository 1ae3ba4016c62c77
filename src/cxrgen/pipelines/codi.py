"""CodiPipeline: any subset of {frontal, lateral, report} -> the others, with CoDi XR's bridged per-modality models.

The sibling of :class:`cxrgen.pipelines.any_to_any.MultiViewPipeline` for the three-model arm
(:class:`cxrgen.denoisers.codi.CodiXR`): the same folder layout (``denoiser/``, ``autoencoder/``,
``report_codec/``, ``scheduler/``, ``model_index.json``), the same call, modes, guidance and output.
Sampling differs only in what runs: at every step only the generated modalities' denoisers run, each
attending (through the bridges) to the environment encodings of the given and the other generated
modalities; an absent modality is masked out of the bridges, and dropping a condition for guidance is
the null condition (Ho & Salimans 2022, eq. 6, per input as Composable Diffusion).

>>> pipe = CodiPipeline.from_pretrained("runs/codi/model")
>>> out = pipe(frontal=images, generate=["lateral"], guidance_scale={"frontal": 2.0})
"""

from __future__ import annotations

from collections.abc import Sequence

import diffusers
import torch

from cxrgen.pipelines.any_to_any import MultiViewPipeline

#: Modes a stage-1 model serves (no bridge trained yet): views from the report or from nothing, the report alone.
SINGLE_MODES: tuple[str, ...] = ("->frontal", "->lateral", "->report", "report->frontal", "report->lateral",
                                 "report->frontal+lateral", "->frontal+lateral")


class CodiPipeline(MultiViewPipeline):
    """Per-modality denoisers with cross-modal bridges + image codec + report codec + training schedule."""

    def _predict(self, latents: dict[str, torch.Tensor], times: dict[str, torch.Tensor],
                 outputs: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """Run only the ``outputs`` modalities' denoisers (the others' trunks would be wasted work)."""
        return self.denoiser(latents, times, outputs=outputs)


# As for MultiViewPipeline: diffusers looks a model_index.json's "_class_name" up in its own namespace.
if not hasattr(diffusers, CodiPipeline.__name__):
    setattr(diffusers, CodiPipeline.__name__, CodiPipeline)
