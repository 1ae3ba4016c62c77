"""End to end on a tiny twin set: `cxrgen train-multiview` (stage joint), `cxrgen generate` any-to-any, the evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("nibabel", reason="the twin extra is not installed (pip install -e '.[twin]')")

from cli_helpers import one_error_line  # noqa: E402

from cxrgen.cli import main  # noqa: E402
from cxrgen.evaluate.joint_twin import joint_cost  # noqa: E402
from cxrgen.evaluate.multiview import score_multiview  # noqa: E402
from cxrgen.pipelines import MultiViewPipeline  # noqa: E402
from cxrgen.twin import write_twin_set  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("joint")
    twin = root / "twin"
    write_twin_set(12, SIZE, twin, seed=5, progress=False)
    config = root / "joint.yaml"
    config.write_text(f"""stage: joint
data: {{twin_dirs: ["{twin}"], image_size: {SIZE}}}
joint: {{denoiser: joint-uvit-tiny, model_image_size: {SIZE}, report_tokens: 2, report_dim: 8, steps: 3,
         batch_size: 4, log_every: 1, sampling: {{sampler: ddim, steps: 2, guidance_scale: 1.5}}}}
out_dir: {root / "run"}
progress: false
""")
    assert main(["train-multiview", str(config)]) == 0
    return twin, root / "run" / "model"


@pytest.mark.slow
def test_train_generate_and_evaluate_end_to_end(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    twin, model = trained
    metrics = json.loads((model.parent / "joint_metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["loss_history"]) == 3
    frontal = next((twin / "images").glob("*_pa.png"))
    assert main(["generate", "--model", str(model), "--frontal", str(frontal), "--to", "lateral,report",
                 "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    lateral = Image.open(tmp_path / "a" / "multiview_0_lateral.png")
    assert lateral.size == (SIZE, SIZE) and lateral.text["cxrgen_role"] == "generated"
    meta = json.loads((tmp_path / "a" / "multiview_0_report.json").read_text())
    assert meta["given"] == ["frontal"] and meta["generated"] == ["lateral", "report"]
    assert main(["generate", "Small left pleural effusion.", "--views", "frontal,lateral", "--model", str(model),
                 "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert {p.name for p in (tmp_path / "b").glob("*.png")} == {"multiview_0_frontal.png", "multiview_0_lateral.png"}
    assert main(["generate", "--model", str(model), "--frontal", str(frontal), "--to", "frontal",
                 "--out", str(tmp_path / "c")]) == 2
    assert "both given" in one_error_line(capsys)

    pipe = MultiViewPipeline.from_pretrained(model)
    scores, _ = score_multiview(pipe, str(twin), n=2, split="train", batch=2, progress=False)
    assert scores["n"] == 2 and 0 <= scores["frontal_to_lateral"]["coherence"] <= 1
    assert scores["frontal_to_lateral"]["ceiling_real_pairs"]["coherence"] >= 0.5  # real pairs read well
    cost = joint_cost(pipe)
    assert cost["gflops_per_generated_pair"] > 2 * cost["gflops_decode_per_view"] > 0


@pytest.mark.slow
def test_training_continues_from_a_saved_joint_model(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from cxrgen.train.multiview import run_train_multiview

    _, model = trained
    config = model.parent.parent / "joint.yaml"
    run_train_multiview(config, [f"joint.init_from={model}", "joint.steps=1"], tmp_path / "more")
    assert (tmp_path / "more" / "model" / "model_index.json").is_file()
    assert main(["train-multiview", str(config), "--set", f"joint.init_from={model}", "--set", "joint.denoiser=joint-uvit-xs",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "another architecture" in one_error_line(capsys)
    # a new report latent (another report codec) keeps the rest of the network and learns the report's maps afresh
    from safetensors.torch import load_file

    run_train_multiview(config, [f"joint.init_from={model}", "joint.steps=1", "joint.lr=1e-12", "joint.report_dim=16"],
                        tmp_path / "report16")
    old, new = (load_file(str(d / "denoiser" / "diffusion_pytorch_model.safetensors"))
                for d in (model, tmp_path / "report16" / "model"))
    assert torch.allclose(old["patch_embed.frontal.weight"], new["patch_embed.frontal.weight"], atol=1e-6)
    assert new["report_embed.weight"].shape[1] == 16 and torch.allclose(old["pos_embed"][:, :-2], new["pos_embed"][:, :-2], atol=1e-6)
