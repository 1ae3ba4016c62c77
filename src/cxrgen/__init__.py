"""cxrgen: generate chest X-rays from radiology report text, train such models, and measure them.

>>> from cxrgen import CXRPipeline
>>> pipe = CXRPipeline.from_pretrained("src/cxrgen/models/default")

The model classes are exported here lazily (``import cxrgen`` stays light) because a saved model's
``model_index.json`` names each part as ``["cxrgen", "<class>"]``, the way diffusers finds them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Exported name -> module that defines it (imported on first use).
_EXPORTS = {
    "CXRPipeline": "cxrgen.pipeline",
    "UViT": "cxrgen.denoisers.uvit",
    "UNetDenoiser": "cxrgen.denoisers.unet",
    "JointUViT": "cxrgen.denoisers.joint_uvit",
    "MultiViewPipeline": "cxrgen.pipelines.any_to_any",
    "CodiXR": "cxrgen.denoisers.codi",
    "CodiPipeline": "cxrgen.pipelines.codi",
    "HashedReportCodec": "cxrgen.text.report_standin",
    "ReportCodec": "cxrgen.text.report_ae",
    "LatentCodec": "cxrgen.autoencoder",
    "IdentityCodec": "cxrgen.autoencoder",
    "TextEncoder": "cxrgen.text.base",
    "BertTextEncoder": "cxrgen.text.hf",
    "CLIPTextEncoder": "cxrgen.text.hf",
    "MiniLMTextEncoder": "cxrgen.text.minilm",
    "BiomedCLIPTextEncoder": "cxrgen.text.biomedclip",
    "ScratchTextEncoder": "cxrgen.text.scratch",
    "ModelMixin": "diffusers",  # diffusers picks a part's load method by its base class found here
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxrgen' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
