"""tools/ship_multiview.py: the shipped default guidance scale is written where the pipeline reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script

TOOL = Path(__file__).resolve().parents[1] / "tools" / "ship_multiview.py"


def test_the_guidance_default_lands_in_model_index(tmp_path: Path) -> None:
    from cxrgen.pipelines.loader import PACKAGED_MULTIVIEW

    ship = load_script(TOOL)
    source = PACKAGED_MULTIVIEW["twin-codi"]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text((source / "model_index.json").read_text())
    before = json.loads((folder / "model_index.json").read_text())
    sampling = ship.set_guidance_default(folder, 2.5)
    after = json.loads((folder / "model_index.json").read_text())
    assert sampling["guidance_scale"] == 2.5 == after["sampling"]["guidance_scale"]
    assert {k: v for k, v in after.items() if k != "sampling"} == {k: v for k, v in before.items() if k != "sampling"}
    assert {k: v for k, v in after["sampling"].items() if k != "guidance_scale"} == \
        {k: v for k, v in before["sampling"].items() if k != "guidance_scale"}
    with pytest.raises(SystemExit, match=">= 1"):
        ship.set_guidance_default(folder, 0.5)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    with pytest.raises(SystemExit, match="no sampling defaults"):
        ship.set_guidance_default(folder, 2.0)


def test_the_record_lists_every_aligned_stage_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import sys

    from cxrgen.pipelines.loader import PACKAGED_MULTIVIEW

    ship = load_script(TOOL)
    runs = {}
    for name, stage in (("ae", "report_ae"), ("aligned", "aligned"), ("aligned_sites", "aligned"),
                        ("codi", "codi_single")):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "metrics.json").write_text(json.dumps({"stage": stage, "train_seconds": 1.0}))
    shutil.copytree(PACKAGED_MULTIVIEW["twin-codi"], runs["codi"] / "model")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"split": "validate", "n": 2, "all_marks_passed": False}))
    dest = tmp_path / "shipped"
    monkeypatch.setattr(sys, "argv", ["ship", str(runs["codi"]), "--report-ae", str(runs["ae"]), "--aligned",
                                      str(runs["aligned"]), str(runs["aligned_sites"]), "--eval", str(evaluation),
                                      "--recipe", "r", "--dest", str(dest)])
    ship.main()
    record = json.loads((dest / "training.json").read_text())
    assert [s["run"] for s in record["stages"]] == ["ae", "aligned", "aligned_sites", "codi"]
    assert record["evaluation"]["validate"]["n"] == 2 and (dest / "weights_sha256.json").is_file()
