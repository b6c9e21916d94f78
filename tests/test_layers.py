"""Layers only point down: no unit of edgeflower imports a unit of its own layer or above (``edgeflower._layers``),
and the package graph has no cycle. The graph is read from the source with ``ast`` (nothing is imported)."""

from __future__ import annotations

from pathlib import Path

from edgeflower._layers import LAYERS, ROOT, cycles, import_edges, units, upward_edges

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""(importing file, imported module) that still break the order. This set may only shrink: fix an entry, then
delete it (test_known_exceptions_are_still_needed fails until you do)."""
KNOWN_CYCLES: list[list[str]] = []
MAX_MODULE_LINES = 500
"""Small modules: a file over this many lines does several jobs; split it by job."""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "edgeflower" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "edgeflower"


def test_every_unit_sits_in_a_declared_layer():
    declared = {unit for layer in LAYERS for unit in layer}
    undeclared = [u for u in units() if u not in declared]
    assert not undeclared, f"add these packages/modules to edgeflower._layers.LAYERS: {undeclared}"


def test_no_unit_imports_its_own_layer_or_above():
    bad = [e for e in upward_edges(import_edges()) if (e.file, e.module) not in KNOWN_UPWARD]
    assert not bad, "imports against the layer order of edgeflower._layers.LAYERS:\n" + "\n".join(map(str, bad))


def test_no_package_level_cycle():
    found = [c for c in cycles(import_edges()) if c not in KNOWN_CYCLES]
    assert not found, "package-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_known_exceptions_are_still_needed():
    edges = import_edges()
    upward = {(e.file, e.module) for e in upward_edges(edges)}
    fixed = sorted(KNOWN_UPWARD - upward)
    assert not fixed, f"fixed, delete from KNOWN_UPWARD in tests/test_layers.py: {fixed}"
    gone = [c for c in KNOWN_CYCLES if c not in cycles(edges)]
    assert not gone, f"fixed, delete from KNOWN_CYCLES in tests/test_layers.py: {gone}"


def test_no_module_is_over_500_lines():
    lines = {p.relative_to(ROOT.parent).as_posix(): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    over = sorted((n, name) for name, n in lines.items() if n > MAX_MODULE_LINES)
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by job): " + ", ".join(
        f"{name} ({n})" for n, name in reversed(over)
    )


def test_reader_sees_function_level_relative_and_type_checking_imports(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "from . import loader\nfrom .loader import load\n",
            "data/loader.py": "def load():\n    from edgeflower.models.zoo import build\n    return build\n",
            "models/__init__.py": "",
            "models/zoo.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..app import task\n",
            "app/__init__.py": "",
            "app/task.py": "import edgeflower.data.loader\nfrom edgeflower import __version__\n",
        },
    )
    got = {(e.file, e.line, e.source, e.target, e.module) for e in import_edges(root)}
    assert got == {
        ("edgeflower/data/loader.py", 2, "data", "models", "edgeflower.models.zoo"),  # inside a function
        ("edgeflower/models/zoo.py", 3, "models", "app", "edgeflower.app.task"),  # relative, under TYPE_CHECKING
        ("edgeflower/app/task.py", 1, "app", "data", "edgeflower.data.loader"),
    }  # imports within a unit (data's own relative ones) and of the facade's __version__ are no edges


def test_upward_import_is_reported_with_file_line_and_module(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "training.py": "from edgeflower.device.split import SplitTrainer\n",
            "device/__init__.py": "",
            "device/split.py": "from edgeflower.training import evaluate\nfrom edgeflower import EdgeStrategy\n",
        },
    )
    bad = [str(e) for e in upward_edges(import_edges(root))]
    assert bad == [
        "edgeflower/device/split.py:2 (device) imports edgeflower (the top-level facade: import from the subpackage)",
        "edgeflower/training.py:1 (training) imports edgeflower.device.split (device)",
    ]


def test_cycles_are_found_between_units(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import edgeflower.b\n",
            "b.py": "import edgeflower.c\n",
            "c.py": "import edgeflower.a\n",
            "d.py": "import edgeflower.a\n",
        },
    )
    assert cycles(import_edges(root)) == [["a", "b", "c"]]
