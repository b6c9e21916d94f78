"""The layers of edgeflower: which package may import which, and the import graph read from the code.

Every subpackage and top-level module of ``edgeflower`` (a *unit*) sits in one layer of :data:`LAYERS`, listed
from the top down. A unit may import units of the layers below its own, never one of its own layer or above, so
the package graph has no cycle and a change low down cannot depend on a change high up. ``tests/test_layers.py``
checks it; ``python -m edgeflower._layers`` prints the package graph and what breaks the order.

The graph is read with :mod:`ast` (nothing is imported): every ``import`` and ``from ... import`` anywhere in a
module, in functions and under ``TYPE_CHECKING`` too, relative imports resolved. Imports by a computed name
(``importlib.import_module``: the CLI's subcommands, the top-level facade's lazy exports, model references) are not
in it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAYERS",
    "ROOT",
    "Edge",
    "cycles",
    "import_edges",
    "layer_of",
    "module_of",
    "unit_of",
    "units",
    "upward_edges",
]

ROOT = Path(__file__).resolve().parent
"""The ``edgeflower`` package directory."""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),  # the `edgeflower` command: finds its subcommands by name
    ("app", "commands"),  # entry points: the Flower app (`flwr run .`) and the CLI subcommands
    ("testbed",),  # the multi-process testbed (network namespaces, Flower's Deployment Engine)
    ("flwrctl",),  # controlling Flower: its home, processes, Control API, runs, Simulation and Deployment Engines
    ("config",),  # the app's run configuration, validated key by key
    ("config_keys",),  # what each run-config key accepts: choices, ranges, the value parser, ConfigError
    ("serving",),  # partitioned inference with failover
    ("device", "edge", "pruning"),  # device-side trainers, the edge server, pruning
    ("privacy",),  # DP-SGD, accounting, Flower's DP wrappers and mods
    ("strategies",),  # Flower strategy wrappers (EdgeStrategy, StrategyWrapper)
    ("planning",),  # split-point planners, cost model, FedAdapt's agent
    ("runlog",),  # a run's metrics on disk
    ("plotting",),  # pictures of runs
    ("process", "progress", "timeline"),  # child processes; progress logs; per-batch phase timelines
    ("transport",),  # the offload channel: codec, messages, tokens, TLS, gRPC
    ("training",),  # the training steps every side shares: optimizer, local pass, micro-batch loss, evaluation
    ("models",),  # splittable models, zoo, profiler
    ("data",),  # datasets and partitioners
    ("_layers",),  # this map
)
"""The units of ``edgeflower``, top layer first; units in one tuple are peers that must not import each other."""

_RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Edge:
    """One import: ``file`` (relative to the repository) line ``line`` imports ``module`` (unit ``target``)."""

    file: str
    line: int
    source: str
    target: str
    module: str

    def __str__(self) -> str:
        target = self.target or "the top-level facade: import from the subpackage"
        return f"{self.file}:{self.line} ({self.source}) imports {self.module} ({target})"


def module_of(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a file of the package at ``root`` (``edgeflower/a/b.py`` -> ``edgeflower.a.b``)."""
    parts = list(path.resolve().relative_to(root.resolve().parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The unit of a dotted module name: ``edgeflower.a.b`` -> ``a``; ``edgeflower`` -> ``""`` (the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(unit: str) -> int | None:
    """The rank of ``unit``'s layer (0 = top), ``None`` if it is not declared in :data:`LAYERS`."""
    return _RANK.get(unit)


def _is_module(dotted: str, root: Path) -> bool:
    path = root.resolve().parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, root: Path) -> Iterator[str]:
    """The ``edgeflower`` modules one import statement names (``from p import m`` names ``p.m`` if it is a module)."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name.split(".")[0] == "edgeflower")
        return
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "edgeflower":
        return
    for alias in node.names:
        name = f"{base}.{alias.name}"
        if _is_module(name, root):
            yield name
        elif base != "edgeflower" or not alias.name.startswith("__"):  # `from edgeflower import __version__`: no edge
            yield base


def import_edges(root: Path = ROOT) -> list[Edge]:
    """Every import between two different units of the package under ``root``."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        module = module_of(path, root)
        source = unit_of(module)
        if not source:  # the facade: lazy exports by name only
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, module, path.name == "__init__.py", root):
                    target = unit_of(name)
                    if target != source:
                        rel = path.resolve().relative_to(root.resolve().parent).as_posix()
                        edges.append(Edge(rel, node.lineno, source, target, name))
    return edges


def units(root: Path = ROOT) -> list[str]:
    """The units on disk under ``root``: its subpackages and top-level modules (the facade aside)."""
    return sorted({unit_of(module_of(p, root)) for p in root.rglob("*.py")} - {""})


def upward_edges(edges: list[Edge]) -> list[Edge]:
    """The imports that break :data:`LAYERS`: into the importer's own layer or above, or of an undeclared unit."""
    bad = []
    for edge in edges:
        src, dst = layer_of(edge.source), layer_of(edge.target)
        if src is None or dst is None or dst <= src:
            bad.append(edge)
    return bad


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The units ``start`` reaches through one or more imports (itself only through a cycle)."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        unit = todo.pop()
        if unit not in seen:
            seen.add(unit)
            todo.extend(graph.get(unit, ()))
    return seen


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The unit-level import cycles: groups of more than one unit that all reach each other, sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    reach = {unit: _reachable(graph, unit) for unit in graph}
    groups = {frozenset(v for v in reach[u] if u in reach.get(v, ())) for u in graph}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def main() -> int:
    """Print the unit graph layer by layer, then the imports that break the order and the cycles."""
    edges = import_edges()
    targets: dict[str, set[str]] = {}
    for edge in edges:
        targets.setdefault(edge.source, set()).add(edge.target)
    present = set(units())
    for rank, layer in enumerate(LAYERS):
        for unit in layer:
            if unit in present:
                print(f"{rank:2d} {unit:<11} -> {', '.join(sorted(targets.get(unit, ()))) or '-'}")
    bad, loops = upward_edges(edges), cycles(edges)
    for unit in sorted(present - set(_RANK)):
        print(f"undeclared: {unit} (add it to edgeflower._layers.LAYERS)")
    for edge in bad:
        print(f"upward: {edge}")
    for loop in loops:
        print(f"cycle: {' <-> '.join(loop)}")
    return 1 if bad or loops or present - set(_RANK) else 0


if __name__ == "__main__":
    sys.exit(main())
