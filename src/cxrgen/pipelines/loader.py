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


#: Any-to-any models shipped with cxrgen, by name: the CoDi XR arm trained on the CT twin (docs/multiview.md).
PACKAGED_MULTIVIEW: dict[str, Path] = {"twin-codi": Path(__file__).resolve().parents[1] / "models" / "twin-codi"}
DEFAULT_MULTIVIEW = "twin-codi"


def multiview_model_path(model: str | Path | None) -> Path:
    """The folder of ``model``: a path, or the name of a packaged model (None: the default, twin-codi)."""
    name = DEFAULT_MULTIVIEW if model is None else str(model)
    if name in PACKAGED_MULTIVIEW and not Path(name).exists():
        return PACKAGED_MULTIVIEW[name]
    return Path(name)


def load_multiview_pipeline(folder: str | Path | None = None) -> MultiViewPipeline:
    """The MultiViewPipeline or CodiPipeline saved in ``folder`` (by its model_index.json); a packaged model's
    name (``twin-codi``) or None (the default) loads the shipped one."""
    folder = multiview_model_path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{folder}: no model_index.json; give a folder written by `cxrgen train-multiview` "
                          "(stage joint, codi_single or codi_bridge)")
    name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    if name not in MULTIVIEW_PIPELINES:
        raise ConfigError(f"{folder} holds a {name!r}, not an any-to-any model ({sorted(MULTIVIEW_PIPELINES)})")
    return MULTIVIEW_PIPELINES[name].from_pretrained(folder)
