"""Routes through the chain of inference nodes and the failover routes of each technique.

A partition is a list of ``cuts`` ``[0 = c_0 < c_1 < ... < c_N = num_blocks]``: node ``i`` holds blocks
``[c_i, c_{i+1})``. The controller relays activations from stage to stage (a hub-and-spoke chain), so a route is
just the ordered list of stages a request visits:

* **repartition**: the blocks are spread again over the surviving nodes (new weights deployed);
* **early exit**: the stages before the failed node, the last one applying its exit head;
* **skip**: every stage but the failed node's, allowed only when its blocks map activations to the same shape
  (residual blocks inside a stage), so the next node accepts what the previous one produced.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TECHNIQUES",
    "Route",
    "Stage",
    "balanced_cuts",
    "check_cuts",
    "early_exit_route",
    "initial_route",
    "new_version",
    "repartition_route",
    "skip_route",
    "skippable",
]

TECHNIQUES = ("repartition", "early_exit", "skip")


@dataclass(frozen=True)
class Stage:
    """One hop: ``node`` runs blocks ``[start, stop)``, then its exit head when ``exit``."""

    node: int
    start: int
    stop: int
    exit: bool = False


@dataclass(frozen=True)
class Route:
    """The stages a request visits, the deployment version they belong to and the technique that made them."""

    version: str
    stages: tuple[Stage, ...]
    technique: str = "initial"
    cuts: tuple[int, ...] = ()

    def nodes(self) -> list[int]:
        """Node indices on the route, in order."""
        return [s.node for s in self.stages]

    def describe(self) -> list[list[int | bool]]:
        """JSON-friendly ``[[node, start, stop, exit], ...]``."""
        return [[s.node, s.start, s.stop, s.exit] for s in self.stages]


def new_version() -> str:
    """A fresh deployment version (unique across controller restarts)."""
    return secrets.token_hex(6)


def check_cuts(cuts: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """Validate a partition; return it as a tuple."""
    c = tuple(int(v) for v in cuts)
    if len(c) < 2 or c[0] != 0 or c[-1] != num_blocks or any(a >= b for a, b in itertools.pairwise(c)):
        raise ValueError(f"cuts must rise strictly from 0 to {num_blocks}, got {list(c)}")
    return c


def balanced_cuts(block_cost: Sequence[float], parts: int) -> tuple[int, ...]:
    """Contiguous partition of the blocks into ``parts`` non-empty runs minimising the costliest run (exact DP)."""
    n = len(block_cost)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} blocks over {parts} nodes")
    prefix = [0.0]
    for c in block_cost:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    arg = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        for j in range(p, n + 1):
            for i in range(p - 1, j):
                cost = max(best[p - 1][i], prefix[j] - prefix[i])
                if cost < best[p][j]:
                    best[p][j], arg[p][j] = cost, i
    cuts = [n]
    for p in range(parts, 0, -1):
        cuts.append(arg[p][cuts[-1]])
    return tuple(reversed(cuts))


def initial_route(cuts: Sequence[int], nodes: Sequence[int] | None = None) -> Route:
    """Node ``nodes[i]`` (default ``i``) runs blocks ``[cuts[i], cuts[i + 1])``."""
    ids = list(nodes) if nodes is not None else list(range(len(cuts) - 1))
    stages = tuple(Stage(n, a, b) for n, a, b in zip(ids, cuts, cuts[1:], strict=False))
    return Route(new_version(), stages, "initial", tuple(cuts))


def repartition_route(block_cost: Sequence[float], alive: Sequence[int]) -> Route:
    """Every block spread over the ``alive`` nodes (balanced by ``block_cost``)."""
    cuts = balanced_cuts(block_cost, min(len(alive), len(block_cost)))
    route = initial_route(cuts, list(alive)[: len(cuts) - 1])
    return Route(route.version, route.stages, "repartition", cuts)


def early_exit_route(route: Route, failed: int, exits: Sequence[int]) -> Route | None:
    """The stages before ``failed``'s, exiting at the last one; ``None`` without an exit head there."""
    nodes = route.nodes()
    pos = nodes.index(failed)
    if pos == 0 or route.stages[pos - 1].stop not in exits:
        return None
    kept = list(route.stages[:pos])
    kept[-1] = Stage(kept[-1].node, kept[-1].start, kept[-1].stop, True)
    return Route(route.version, tuple(kept), "early_exit", route.cuts)


def skippable(out_shapes: Sequence[Sequence[int]], in_shape: Sequence[int], start: int, stop: int) -> bool:
    """Whether blocks ``[start, stop)`` map their input shape to the same output shape."""
    before = tuple(in_shape) if start == 0 else tuple(out_shapes[start - 1])
    return stop < len(out_shapes) and before == tuple(out_shapes[stop - 1])


def skip_route(route: Route, failed: int, out_shapes: Sequence[Sequence[int]], in_shape: Sequence[int]) -> Route | None:
    """Every stage but ``failed``'s; ``None`` when its blocks change the activation shape."""
    stage = route.stages[route.nodes().index(failed)]
    if stage.exit or not skippable(out_shapes, in_shape, stage.start, stage.stop):
        return None
    kept = tuple(s for s in route.stages if s.node != failed)
    return Route(route.version, kept, "skip", route.cuts)
