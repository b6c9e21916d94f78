"""Failure detection: heartbeats to every live node, confirmation of a node a request found unavailable, and pings
to dead nodes so that one that answers again is re-admitted.

A node that misses ``misses`` consecutive heartbeats, or that a request found unavailable and that then misses one
heartbeat, is handed to :meth:`Failover.fail_over <edgeflower.serving.failover.Failover.fail_over>`. Every
``readmit_every`` heartbeats each dead node is pinged; one that answers is handed to
:meth:`Failover.readmit <edgeflower.serving.failover.Failover.readmit>`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from edgeflower.serving.failover import Failover
from edgeflower.serving.nodeclient import NodeClient
from edgeflower.serving.plan import Route
from edgeflower.serving.settings import ControllerConfig
from edgeflower.transport.errors import EdgeError

__all__ = ["FailureDetector"]


class FailureDetector:
    """Heartbeat every live node from a background thread; fail over dead ones and re-admit those that come back.

    Parameters
    ----------
    clients : sequence of NodeClient
        Node ``i``'s client at index ``i``.
    failover : Failover
        Which nodes are dead; told of deaths and returns.
    config : ControllerConfig
        ``heartbeat_s``, ``heartbeat_timeout_s``, ``misses`` and ``readmit_every``.
    """

    def __init__(self, clients: Sequence[NodeClient], failover: Failover, config: ControllerConfig) -> None:
        self.clients = clients
        self.failover = failover
        self.config = config
        self._misses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _answers(self, node: int) -> bool:
        try:
            self.clients[node].ping(self.config.heartbeat_timeout_s)
        except EdgeError:
            return False
        return True

    def suspect(self, node: int, why: str) -> None:
        """A forward to ``node`` failed: confirm with one heartbeat, then fail over (``why`` names the detector)."""
        if node in self.failover.dead:
            return
        if not self._answers(node):
            self.failover.fail_over(node, why)

    def reset(self, node: int) -> None:
        """Forget ``node``'s missed heartbeats (it was re-admitted)."""
        self._misses[node] = 0

    def readmit(self, node: int) -> Route | None:
        """Hand ``node`` to :meth:`Failover.readmit`; once back, its missed heartbeats count from zero.

        Returns
        -------
        Route or None
            The re-planned route, or ``None`` if ``node`` was not dead or could not be re-admitted.
        """
        route = self.failover.readmit(node)
        if route is not None:
            self.reset(node)
        return route

    def beat(self, number: int) -> None:
        """Heartbeat ``number`` (from 1): ping every live node; every ``readmit_every``-th, every dead one too."""
        for node in self.failover.alive():
            if self._answers(node):
                self._misses[node] = 0
                continue
            self._misses[node] = self._misses.get(node, 0) + 1
            if self._misses[node] >= self.config.misses:
                self.failover.fail_over(node, "heartbeat")
        if number % max(self.config.readmit_every, 1) == 0:
            for node in sorted(self.failover.dead):
                if self._answers(node):
                    self.readmit(node)

    def _loop(self) -> None:
        number = 0
        while not self._stop.wait(self.config.heartbeat_s):
            number += 1
            self.beat(number)

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edgeflower-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the heartbeat thread (waits up to ``timeout_s`` for it). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
