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

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from cxrgen.config import SamplingConfig
from cxrgen.config.multiview import CODI_REPORT_TEXTS
from cxrgen.data.reports import report_part
from cxrgen.denoisers.codi import CONTEXT
from cxrgen.errors import ConfigError
from cxrgen.integrity import record_weights
from cxrgen.pipeline import register_cxrgen_classes
from cxrgen.pipelines.any_to_any import MultiViewPipeline

#: Modes a stage-1 model serves (no bridge trained yet): views from the report or from nothing, the report alone.
SINGLE_MODES: tuple[str, ...] = ("->frontal", "->lateral", "->report", "report->frontal", "report->lateral",
                                 "report->frontal+lateral", "->frontal+lateral")


class CodiPipeline(MultiViewPipeline):
    """Per-modality denoisers with cross-modal bridges + image codec + report codec + training schedule.

    ``text_encoder`` (optional): a frozen sentence encoder through which the image denoisers read a given
    report (a denoiser with ``context_dim``), as CoDi conditions through its prompt encoders; the report
    denoiser and the bridges keep the report codec's latent. Saved by reference when it is a frozen
    packaged encoder (MiniLM), like the default report -> CXR model's. ``report_text`` (saved in
    ``model_index.json``): what of a given report the text encoder reads, ``"full"`` or ``"impression"`` (its
    IMPRESSION section, the whole text when it has none), as the model was trained (``codi.report_text``).
    """

    _optional_components = ["text_encoder"]

    def __init__(self, denoiser: nn.Module, autoencoder: nn.Module, report_codec: nn.Module,
                 scheduler: SchedulerMixin, image_size: int = 128, modes: Sequence[str] | None = None,
                 sampling: SamplingConfig | dict[str, Any] | None = None, text_encoder: nn.Module | None = None,
                 report_text: str = "full") -> None:
        super().__init__(denoiser, autoencoder, report_codec, scheduler, image_size=image_size, modes=modes,
                         sampling=sampling)
        if report_text not in CODI_REPORT_TEXTS:
            raise ConfigError(f"report_text={report_text!r}: use one of {list(CODI_REPORT_TEXTS)}")
        if report_text != "full" and text_encoder is None:
            raise ConfigError(f"report_text={report_text!r} chooses what the text encoder reads: give a text_encoder "
                              "(a model trained with codi.report_condition: text) or report_text='full'")
        self.register_to_config(report_text=report_text)
        self.register_modules(text_encoder=text_encoder)
        if text_encoder is not None:
            register_cxrgen_classes(self, ("text_encoder",))
        want = getattr(denoiser.config, "context_dim", None)
        if (want is None) != (text_encoder is None):
            raise ConfigError("the denoiser reads the report through a text encoder (context_dim) exactly when the "
                              "pipeline has one: load the folder written by `cxrgen train-multiview` as a whole")
        if text_encoder is not None and (text_encoder.hidden_size != want
                                         or text_encoder.config.max_sentences != denoiser.config.context_tokens):
            raise ConfigError(f"text encoder of width {text_encoder.hidden_size} and {text_encoder.config.max_sentences} "
                              f"sentences; the denoiser reads {denoiser.config.context_tokens} x {want}")

    @property
    def report_text(self) -> str:
        """What of a given report the text encoder reads: ``"full"`` or ``"impression"``."""
        return str(self.config.get("report_text", "full"))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """diffusers' save; a frozen packaged text encoder is written by reference (its config only)."""
        directory = Path(save_directory)
        super().save_pretrained(directory, **kwargs)
        enc = self.text_encoder
        if enc is not None and not enc.trainable and enc.backend != "scratch":
            shutil.rmtree(directory / "text_encoder")
            enc.save_pretrained(directory / "text_encoder", weights=False)
        record_weights(directory)
        return directory

    def _encode(self, given: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The given latents; with a text encoder, also the sentence vectors of the report's ``report_text`` part
        under ``CONTEXT`` (the report codec always reads the whole report)."""
        out = super()._encode(given)
        if self.text_encoder is not None and "report" in given:
            reports = [given["report"]] if isinstance(given["report"], str) else list(given["report"])
            reports = [report_part(r, self.report_text) for r in reports]
            context, _ = self.text_encoder.encode_sentences(reports, pad_to_max=True)  # (B, S, D), zeros past the end
            out[CONTEXT] = context.to(self.device, out["report"].dtype)
        return out

    def _predict(self, latents: dict[str, torch.Tensor], times: dict[str, torch.Tensor],
                 outputs: Sequence[str] | None) -> dict[str, torch.Tensor]:
        """Run only the ``outputs`` modalities' denoisers (the others' trunks would be wasted work)."""
        return self.denoiser(latents, times, outputs=outputs)


# As for MultiViewPipeline: diffusers looks a model_index.json's "_class_name" up in its own namespace.
if not hasattr(diffusers, CodiPipeline.__name__):
    setattr(diffusers, CodiPipeline.__name__, CodiPipeline)
