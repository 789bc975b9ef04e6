"""The house as built (docs/ARCHITECTURE.md): imports flow down the layers, no module imports
itself round a cycle, and no source file is over 500 lines.

Imports are read with ``ast`` from the source (every ``import`` and ``from ... import``, also
those inside functions and under ``TYPE_CHECKING``), so a lazy import cannot hide an upward one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "attreid"
MAX_LINES = 500

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("zoo",),
    ("schema", "utils"),
    ("config",),
    ("data",),
    ("models", "metrics"),
    ("inference",),
    ("training", "evaluation", "case"),
    ("search",),
    ("footage",),
    ("cluster",),
    ("cli",),
]
"""Bottom to top. A module may import its own package and anything in a lower layer; packages
in one layer do not import each other. ``attreid/__init__.py`` (the facade: the oneDNN cap and
the lazy ``attreid.Predictor``) is outside the layers."""
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
FACADE = {"Predictor": "attreid.inference.predictor", "__version__": "attreid.errors",
          "load_predictor": "attreid.inference.backends",
          "cap_onednn_isa": "attreid.utils.backend"}
"""What ``from attreid import NAME`` really imports (``__version__`` is package metadata: the
bottom layer), so the facade cannot hide an upward import."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The attreid modules ``path`` imports (a ``from pkg import name`` counts as
    ``pkg.name`` when that is a module, else as ``pkg``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if source == "attreid" and alias.name in FACADE:
                    found.add(FACADE[alias.name])
                else:
                    found.add(candidate if _is_module(candidate) else source)
    return {name for name in found if name == "attreid" or name.startswith("attreid.")}


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _unit(module: str) -> str | None:
    """The layered unit of a module: ``attreid.data.io`` -> ``data``, ``attreid.schema`` ->
    ``schema``; None for the facade ``attreid``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_has_a_layer():
    units = {_unit(m) for m in _graph()} - {None}
    assert units <= set(LAYER), f"add {sorted(units - set(LAYER))} to LAYERS and ARCHITECTURE.md"


def test_imports_flow_down_the_layers():
    upward = []
    for module, imported in _graph().items():
        mine = _unit(module)
        if mine is None:
            continue
        for other in imported:
            theirs = _unit(other)
            if theirs is None or theirs == mine:
                continue
            if LAYER[theirs] >= LAYER[mine]:
                upward.append(f"{module} imports {other} ({mine} is layer {LAYER[mine]}, "
                              f"{theirs} layer {LAYER[theirs]})")
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle():
    found = _cycle(_graph())
    assert found is None, " -> ".join(found or [])


def test_the_checks_themselves_can_fail():
    """The cycle finder and the layer rule on made-up graphs."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert LAYER["data"] < LAYER["training"] < LAYER["cli"]
    assert _unit("attreid.metrics.reid") == "metrics" and _unit("attreid") is None


def test_the_facade_does_not_hide_an_upward_import(tmp_path, monkeypatch):
    """``from attreid import Predictor`` in a data module counts as importing inference."""
    module = tmp_path / "attreid" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("from attreid import Predictor, __version__\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert _imports(module) == {"attreid.inference.predictor", "attreid.errors"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_is_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)}: {lines} lines; split it at a real seam"
