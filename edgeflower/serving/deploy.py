"""Deployment: putting a bundle's segments on inference nodes, and calibrating the estimators on the real chain.

:class:`Deployer` sends node ``i`` the weights of its blocks (and the exit head at the end of them, if the bundle
has one) under a route version. The calibration functions measure what the downtime and latency estimators need
before the first failure: how long a deployment takes per byte (:func:`calibrate_downtime`), how long a route swap
takes, the round trip to every node (:func:`measure_hop`), and how fast every node computes
(:func:`calibrate_routes`, refined by every relayed request afterwards).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from edgeflower.serving.bundle import ServingBundle
from edgeflower.serving.estimators import DowntimeModel
from edgeflower.serving.nodeclient import NodeClient, tensor_bytes
from edgeflower.serving.plan import Route
from edgeflower.serving.routing import CurrentRoute, Router

__all__ = ["Deployer", "calibrate_downtime", "calibrate_routes", "measure_hop"]

SAMPLES = 5
"""Repetitions of each calibration measurement (their median is kept)."""


class Deployer:
    """Deploy segments of a bundle to the inference nodes.

    Parameters
    ----------
    bundle : ServingBundle
        Model, exit heads and spec.
    clients : sequence of NodeClient
        Node ``i``'s client at index ``i``.
    """

    def __init__(self, bundle: ServingBundle, clients: Sequence[NodeClient]) -> None:
        self.bundle = bundle
        self.clients = clients

    def segment(self, start: int, stop: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Weights of blocks ``[start, stop)`` and of the exit head at ``stop`` (``None`` without one)."""
        state = self.bundle.model.segment(start, stop, share=True).state_dict()
        head = self.bundle.exits.get(stop)
        return state, (head.state_dict() if head is not None else None)

    def segment_bytes(self, start: int, stop: int) -> int:
        """Weight bytes of blocks ``[start, stop)`` and the exit head at ``stop`` (if any)."""
        state, exit_state = self.segment(start, stop)
        return sum(tensor_bytes(t) for t in [*state.values(), *(exit_state or {}).values()])

    def deploy(self, node: int, version: str, start: int, stop: int) -> tuple[int, float]:
        """Deploy blocks ``[start, stop)`` (and the exit head at ``stop``) to ``node`` under ``version``.

        Returns
        -------
        tuple of int and float
            Bytes of weights sent and seconds the deployment took.

        Raises
        ------
        EdgeError
            When the node refused or could not be reached.
        """
        state, exit_state = self.segment(start, stop)
        head = self.bundle.exits.get(stop)
        seconds = self.clients[node].deploy(
            version,
            self.bundle.spec,
            start,
            stop,
            state,
            self.bundle.arch,
            exit_state,
            head.in_shape if head is not None else None,
        )
        nbytes = sum(tensor_bytes(t) for t in [*state.values(), *(exit_state or {}).values()])
        return nbytes, seconds

    def deploy_route(self, route: Route) -> list[tuple[int, float]]:
        """Deploy every stage of ``route`` under its version; return ``(bytes, seconds)`` of each stage."""
        return [self.deploy(s.node, route.version, s.start, s.stop) for s in route.stages]


def calibrate_downtime(deployer: Deployer, current: CurrentRoute, downtime: DowntimeModel) -> None:
    """Deploy the current route twice and fit ``downtime`` on the second (warm) deployment; time route swaps.

    The first deployment pays one-off costs (lazy imports, the allocator) that a failover does not. A switch that
    deploys nothing (early exit, skip) costs a route swap, measured as the median of :data:`SAMPLES`.
    """
    route = current.route
    deployer.deploy_route(route)
    downtime.calibrate(deployer.deploy_route(route))
    swaps = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter()
        current.swap(route)
        swaps.append(time.perf_counter() - t0)
    downtime.switch_s = statistics.median(swaps)


def measure_hop(clients: Sequence[NodeClient], timeout_s: float) -> float:
    """Median round trip of a ping over every node (:data:`SAMPLES` each), in seconds."""
    rtts = []
    for client in clients:
        for _ in range(SAMPLES):
            t0 = time.perf_counter()
            client.ping(timeout_s)
            rtts.append(time.perf_counter() - t0)
    return statistics.median(rtts)


def calibrate_routes(router: Router, route: Route, x: torch.Tensor, runs: int) -> None:
    """Run ``x`` through ``route`` ``runs`` times so the latency model learns every node's speed.

    A first, unobserved run warms the deployment: the first forward through a fresh deployment pays one-off costs
    (kernels, allocator); measured, it made a route look several times slower than it serves, and a failover
    decided on that estimate.
    """
    router.run_route(route, "warm-up", x, observe=False)
    for i in range(runs):
        router.run_route(route, f"calibrate-{i}", x)
