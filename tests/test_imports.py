"""The import rule: no cycles between cxrgen's packages, and no module imports a higher layer.

Layers, lowest first (a module may import its own layer and the ones below), in the project's
design order: config, data, text, denoisers, autoencoder -> cache -> train -> pipeline ->
generate / evaluate / phantom / twin / serve -> cli, with two refinements: ``parts``
(building the three networks) sits below ``cache``, and ``pipeline`` (a DiffusionPipeline of the
parts) below ``train``, whose final model is a pipeline. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrgen"

#: Top-level module or package of cxrgen -> layer. A new one must be added here (the test says so).
LAYERS = {
    "errors": 0, "config": 0, "hub": 0, "integrity": 0,
    "data": 1, "dicom": 1, "compute": 1, "outputs": 1,
    "text": 2, "denoisers": 2, "autoencoder": 2, "guidance": 2, "samplers": 2, "losses": 2, "objective": 2, "multiview": 2,
    "parts": 3,
    "cache": 4,
    "pipeline": 5, "pipelines": 5,
    "train": 6,
    "generate": 7, "generate_multiview": 7, "evaluate": 7, "phantom": 7, "twin": 7, "serve": 7, "demo": 7,
    "cli": 8,
}
#: Pairs in the same or allowed layers that must still not import each other (importer, imported).
FORBIDDEN = {("evaluate", "train"), ("cache", "train")}
#: The package itself: ``cxrgen/__init__.py`` exports classes lazily (by name, not by import).
ROOT = "__init__"


def _top(module: str) -> str | None:
    """``cxrgen.train.loop`` -> ``train``; None for modules outside cxrgen."""
    parts = module.split(".")
    return parts[1] if parts[0] == "cxrgen" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Top-level cxrgen names imported anywhere in ``path`` (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = _top(node.module)
            if top is None and node.module == "cxrgen":  # from cxrgen import pipeline
                names.update(a.name for a in node.names if a.name in LAYERS)
            elif top is not None:
                names.add(top)
        elif isinstance(node, ast.Import):
            names.update(t for a in node.names if (t := _top(a.name)) is not None)
    return names


def _graph() -> dict[str, set[str]]:
    """Top-level module -> the other top-level modules it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("").parts
        owner = rel[0]
        if owner == ROOT:
            continue
        graph[owner] |= _imports(path) - {owner}
    return graph


def test_every_module_has_a_layer() -> None:
    unknown = sorted(set(_graph()) - set(LAYERS))
    assert not unknown, f"add {unknown} to LAYERS in tests/test_imports.py (at the layer they belong to)"


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted((a, b) for a, deps in _graph().items() for b in deps if LAYERS.get(b, 0) > LAYERS.get(a, 0))
    assert not upward, f"upward imports (importer, imported): {upward}"
    forbidden = sorted((a, b) for a, deps in _graph().items() for b in deps if (a, b) in FORBIDDEN)
    assert not forbidden, f"forbidden imports (importer, imported): {forbidden}"


def test_no_import_cycles_between_packages() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path, node, dep]
            if dep not in state and (cycle := visit(dep, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a data module importing the trainer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cxrgen.train.trainer import train\n")
    assert _imports(bad) == {"train"}
    assert LAYERS["train"] > LAYERS["data"]
