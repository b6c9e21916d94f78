"""Tails of zoo models kept for later sessions of an edge server (:class:`TailPool`, one per process).

Building a tail means building and initialising the whole model and tracing one input through its head; a session
of a model seen before copies a template or takes a spare instead (:mod:`edgeflower.edge.session`).
"""

from __future__ import annotations

import copy
import json
import threading

import torch

from edgeflower.models.splittable import ModelSpec

__all__ = ["MAX_SPARES", "MAX_TAILS", "TAILS", "TailPool"]

MAX_TAILS = 8
"""Keys (model spec, split point) a pool keeps templates for; a new key beyond them empties the pool."""

MAX_SPARES = 2
"""Spare tails per key: a server that both imports and exports sessions of a model (moves) reuses both tails."""


class TailPool:
    """Tails of zoo models kept for later sessions, by (model spec, split point), at most :data:`MAX_TAILS` keys.

    * A **template** per key: a freshly built tail and its input shape. A later session of the same model copies it
      (about 3 ms for VGG5) instead of building and initialising the whole model and running a forward pass for the
      shape.
    * At most :data:`MAX_SPARES` **spares** per key: tails of sessions that ended here (closed, dropped or migrated
      away), their gradients cleared. A later session of that model takes one as it is (no copy) and loads its own
      weights over every parameter and buffer (``load_state_dict(strict=True)``), so nothing of the earlier session
      survives. Two spares, so that edge servers that move sessions between them in one process (the simulation's
      in-process pool) find a tail for an import while the source still holds the session it exports. DP sessions
      give nothing back (Opacus hooks their tail).

    A model by reference is never pooled (its code is the user's). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, int], tuple[torch.nn.Module, tuple[int, ...]]] = {}
        self._spares: dict[tuple[str, int], list[torch.nn.Module]] = {}

    @staticmethod
    def key(spec: ModelSpec, k: int) -> tuple[str, int] | None:
        """The pool key of ``spec``'s tail from block ``k`` (``None`` for a model by reference)."""
        return None if ":" in spec.name else (json.dumps(spec.to_dict(), sort_keys=True), k)

    def take(self, key: tuple[str, int] | None) -> tuple[torch.nn.Module, tuple[int, ...]] | None:
        """A tail for ``key`` (a spare, else a copy of the template) and its input shape, or ``None``."""
        if key is None:
            return None
        with self._lock:
            template = self._templates.get(key)
            spares = self._spares.get(key)
            spare = spares.pop() if spares else None
        if template is None:
            return None
        return (spare if spare is not None else copy.deepcopy(template[0])), template[1]

    def remember(self, key: tuple[str, int] | None, tail: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
        """Keep a copy of a freshly built ``tail`` as ``key``'s template."""
        if key is None:
            return
        template = copy.deepcopy(tail)
        with self._lock:
            if len(self._templates) >= MAX_TAILS and key not in self._templates:
                self._templates.clear()
                self._spares.clear()
            self._templates[key] = (template, input_shape)

    def give_back(self, key: tuple[str, int] | None, tail: torch.nn.Module) -> None:
        """Keep the tail of an ended session as a spare of ``key`` (if it has a template and room for one)."""
        if key is None:
            return
        for p in tail.parameters():
            p.grad = None
        with self._lock:
            spares = self._spares.setdefault(key, []) if key in self._templates else None
            if spares is not None and len(spares) < MAX_SPARES and all(t is not tail for t in spares):
                spares.append(tail)


TAILS = TailPool()
"""The process's pool: every edge server of the process shares it."""
