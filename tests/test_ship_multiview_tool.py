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
