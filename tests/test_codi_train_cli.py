"""End to end on a tiny twin set: `cxrgen train-multiview` stages codi_single then codi_bridge, generate, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")

from cli_helpers import one_error_line  # noqa: E402

from cxrgen.cli import main  # noqa: E402
from cxrgen.evaluate.multiview import score_multiview  # noqa: E402
from cxrgen.pipelines import CodiPipeline, load_multiview_pipeline  # noqa: E402
from cxrgen.twin import write_twin_set  # noqa: E402

SIZE = 32


@pytest.mark.slow
def test_both_codi_stages_train_then_every_entry_point_reads_the_model(tmp_path: Path, capsys) -> None:
    twin = tmp_path / "twin"
    write_twin_set(12, SIZE, twin, seed=5, progress=False)
    config = tmp_path / "codi.yaml"
    config.write_text(f"""stage: codi_single
data: {{twin_dirs: ["{twin}"], image_size: {SIZE}}}
codi: {{denoiser: codi-tiny, model_image_size: {SIZE}, report_tokens: 2, report_dim: 8, steps: 2,
        batch_size: 4, log_every: 1, sampling: {{sampler: ddim, steps: 2, guidance_scale: 1.5}}}}
out_dir: {tmp_path / "single"}
progress: false
""")
    assert main(["train-multiview", str(config)]) == 0
    single = json.loads((tmp_path / "single" / "codi_metrics.json").read_text())
    assert single["trained_params"] < single["params"] and set(single["loss_history"][-1]) >= {"frontal", "report"}
    assert main(["train-multiview", str(config), "--set", "stage=codi_bridge", "--out", str(tmp_path / "nobase")]) == 2
    assert "codi.init_from" in one_error_line(capsys)
    assert main(["train-multiview", str(config), "--set", "stage=codi_bridge", "--set",
                 f"codi.init_from={tmp_path / 'single' / 'model'}", "--out", str(tmp_path / "bridge")]) == 0
    bridge = json.loads((tmp_path / "bridge" / "codi_metrics.json").read_text())
    assert bridge["trained_params"] < single["trained_params"], "stage 2 trains the bridges only"

    model = tmp_path / "bridge" / "model"
    frontal = next((twin / "images").glob("*_pa.png"))
    assert main(["generate", "--model", str(model), "--frontal", str(frontal), "--to", "lateral,report",
                 "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "a" / "multiview_0_lateral.png").text["cxrgen_role"] == "generated"
    assert main(["generate", "--model", str(tmp_path / "single" / "model"), "--frontal", str(frontal), "--to",
                 "lateral", "--out", str(tmp_path / "b")]) == 2
    assert "not trained" in one_error_line(capsys)
    pipe = load_multiview_pipeline(model)
    assert isinstance(pipe, CodiPipeline)
    scores, _ = score_multiview(pipe, str(twin), n=2, split="train", batch=2, progress=False)
    assert scores["n"] == 2 and 0 <= scores["frontal_to_lateral"]["coherence"] <= 1
