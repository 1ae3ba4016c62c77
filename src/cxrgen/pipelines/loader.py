"""Open an any-to-any model folder with the pipeline class its ``model_index.json`` names (either arm)."""

from __future__ import annotations

import json
from pathlib import Path

from cxrgen.errors import ConfigError
from cxrgen.pipelines.any_to_any import MultiViewPipeline
from cxrgen.pipelines.codi import CodiPipeline

#: ``_class_name`` in model_index.json -> pipeline class: the joint U-ViT arm and the three-model CoDi arm.
MULTIVIEW_PIPELINES: dict[str, type[MultiViewPipeline]] = {
    "MultiViewPipeline": MultiViewPipeline,
    "CodiPipeline": CodiPipeline,
}


def load_multiview_pipeline(folder: str | Path) -> MultiViewPipeline:
    """The MultiViewPipeline or CodiPipeline saved in ``folder`` (by its model_index.json)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{folder}: no model_index.json; give a folder written by `cxrgen train-multiview` "
                          "(stage joint, codi_single or codi_bridge)")
    name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    if name not in MULTIVIEW_PIPELINES:
        raise ConfigError(f"{folder} holds a {name!r}, not an any-to-any model ({sorted(MULTIVIEW_PIPELINES)})")
    return MULTIVIEW_PIPELINES[name].from_pretrained(folder)
