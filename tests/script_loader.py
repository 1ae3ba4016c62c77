"""Import a repository script (benchmarks/, tools/) as a module in the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str | None = None) -> ModuleType:
    """The script at ``path`` as a module named ``name`` (its file stem), registered in ``sys.modules`` (for its
    dataclasses) with its folder on ``sys.path`` (for its helper modules), as when it is run as a script."""
    name = name or path.stem
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
