"""Routing: the route requests take now, and running a request through it until some route answers.

A request visits the stages of the current route one after the other, the controller relaying the activations
(hub and spoke). When the route breaks under it (a node is unavailable, or the route was swapped and a node refuses
the old version) the request is run again, from the start, on the route that replaced it; a node that was
unavailable is reported to failure detection first. A request that finds no working route within its deadline
fails with ``UNAVAILABLE``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from logging import WARNING

import torch
from flwr.common.logger import log

from edgeflower.serving.estimators import LatencyModel
from edgeflower.serving.nodeclient import NodeClient
from edgeflower.serving.plan import Route, Stage
from edgeflower.transport.errors import EdgeUnavailableError, SessionStateError

__all__ = ["CurrentRoute", "Router"]

LATENCY_HISTORY = 1024
"""Served requests per route whose latency :meth:`Router.route_latencies` keeps."""


class CurrentRoute:
    """The route requests take now: swapped atomically, waited on by requests whose route broke.

    Parameters
    ----------
    route : Route
        The first route.
    """

    def __init__(self, route: Route) -> None:
        self._route = route
        self._changed = threading.Condition()

    @property
    def route(self) -> Route:
        """The current route."""
        return self._route

    def swap(self, route: Route) -> None:
        """Make ``route`` current and wake every request waiting for a change."""
        with self._changed:
            self._route = route
            self._changed.notify_all()

    def wait_for_change(self, since: Route, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a route other than ``since`` (return at once if it was swapped already)."""
        with self._changed:
            if self._route.version == since.version and self._route.stages == since.stages:
                self._changed.wait(timeout_s)


class Router:
    """Run requests through the current route over the nodes' clients.

    Parameters
    ----------
    clients : sequence of NodeClient
        Node ``i``'s client at index ``i``.
    current : CurrentRoute
        The route to take.
    latency : LatencyModel
        Learns every node's speed from the timings of relayed forwards.
    suspect : callable
        ``suspect(node, why)``: told of a node that was unavailable to a request (failure detection confirms).
    deadline_s : float
        A request that finds no working route within this long fails.
    retry_wait_s : float
        Longest wait for a new route after a route broke.
    """

    def __init__(
        self,
        clients: Sequence[NodeClient],
        current: CurrentRoute,
        latency: LatencyModel,
        suspect: Callable[[int, str], object],
        deadline_s: float,
        retry_wait_s: float,
    ) -> None:
        self.clients = clients
        self.current = current
        self.latency = latency
        self.suspect = suspect
        self.deadline_s = deadline_s
        self.retry_wait_s = retry_wait_s
        self._served_s: dict[str, deque[float]] = {}

    def forward(
        self, route: Route, stage: Stage, request_id: str, h: torch.Tensor, observe: bool = True
    ) -> torch.Tensor:
        """Run one stage of a request; its timing calibrates the latency model (unless ``observe`` is false)."""
        t0 = time.perf_counter()
        y, compute_s = self.clients[stage.node].forward_timed(route.version, request_id, h, stage.exit)
        if observe:
            self.latency.observe(stage.node, stage, h.shape[0], time.perf_counter() - t0, compute_s)
        return y

    def run_route(self, route: Route, request_id: str, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """Run ``x`` through every stage of ``route`` (no retry, no failure report); return the last output.

        Raises
        ------
        EdgeError
            What the failing stage raised.
        """
        h = x
        for stage in route.stages:
            h = self.forward(route, stage, request_id, h, observe)
        return h

    def run(self, request_id: str, x: torch.Tensor) -> tuple[torch.Tensor, Route]:
        """Run ``x`` through the current route, re-running it on the new route whenever the route breaks.

        Returns
        -------
        tuple of Tensor and Route
            The output and the route that computed it.

        Raises
        ------
        EdgeUnavailableError
            When no route worked within the deadline.
        """
        deadline = time.monotonic() + self.deadline_s
        self.latency.record_request(int(x.shape[0]))  # estimates are made at the batch clients send
        while True:
            route = self.current.route
            out = self._attempt(route, request_id, x)
            if out is not None:
                return out, route
            if time.monotonic() > deadline:
                raise EdgeUnavailableError(f"request {request_id}: no working route within the deadline")
            self.current.wait_for_change(route, self.retry_wait_s)

    def _attempt(self, route: Route, request_id: str, x: torch.Tensor) -> torch.Tensor | None:
        """One run through ``route``: its output, or ``None`` when the route broke (a dead node is reported)."""
        node = -1
        t0 = time.perf_counter()
        try:
            h = x
            for stage in route.stages:
                node = stage.node
                h = self.forward(route, stage, request_id, h)
        except EdgeUnavailableError as exc:
            log(WARNING, "controller: request %s: node %d unavailable (%s)", request_id, node, exc.code.name)
            self.suspect(node, "request")
            return None
        except SessionStateError:
            return None  # the route changed under the request
        served = self._served_s.setdefault(route.version, deque(maxlen=LATENCY_HISTORY))
        served.append(time.perf_counter() - t0)
        return h

    def route_latencies(self, version: str) -> list[float]:
        """Seconds of the last (up to 1024) requests served through route ``version``."""
        return list(self._served_s.get(version, ()))
