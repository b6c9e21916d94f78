"""The serving controller: deploys a bundle over a chain of inference nodes, routes predictions through it,
detects dead nodes with heartbeats and fails over with the technique the user's objectives demand.

:class:`Controller` is a façade that wires its parts together and keeps one object to start, stop and ask:

==================================  ===========================================================================
part                                job
==================================  ===========================================================================
:mod:`~.serving.deploy`             deploy segments to nodes; calibrate the downtime and latency estimators
:mod:`~.serving.routing`            the current route; run a request through it, again on the new one if it breaks
:mod:`~.serving.exactly_once`       every request id computed once and answered once (journalled)
:mod:`~.serving.failover`           dead nodes, failover options and the switch, re-admission
:mod:`~.serving.detection`          heartbeats, confirming a node a request found unavailable
:mod:`~.serving.service`            the ``Predict`` and ``Status`` RPCs
==================================  ===========================================================================

So a client that retries by id until it gets an answer (:class:`~edgeflower.serving.client.ServingClient`) gets
exactly one answer per request, computed once, through whatever failures the chain has meanwhile.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from logging import INFO, WARNING
from types import TracebackType
from typing import Any

import torch
from flwr.common.logger import log

from edgeflower.serving.bundle import ServingBundle
from edgeflower.serving.deploy import Deployer, calibrate_downtime, calibrate_routes, measure_hop
from edgeflower.serving.detection import FailureDetector
from edgeflower.serving.estimators import DowntimeModel, LatencyModel
from edgeflower.serving.exactly_once import ExactlyOnce, journal_key
from edgeflower.serving.failover import Failover, FailoverEvent
from edgeflower.serving.journal import Journal
from edgeflower.serving.nodeclient import NodeClient
from edgeflower.serving.plan import Route, initial_route
from edgeflower.serving.routing import CurrentRoute, Router
from edgeflower.serving.selection import Candidate, Objectives
from edgeflower.serving.service import PredictService
from edgeflower.serving.settings import ControllerConfig
from edgeflower.transport.auth import ROLE_CONTROLLER, RenewingToken, TokenIssuer, TokenVerifier
from edgeflower.transport.codec import Limits
from edgeflower.transport.emulation import LinkProfile
from edgeflower.transport.tls import TLSConfig

__all__ = ["Controller", "ControllerConfig", "FailoverEvent"]


def _check_node_ids(nodes: Sequence[str], node_ids: Sequence[str] | None, parts: int) -> list[str]:
    if len(nodes) != parts:
        raise ValueError(f"the bundle's partition has {parts} parts, {len(nodes)} nodes given")
    ids = [str(a) for a in (nodes if node_ids is None else node_ids)]
    if len(ids) != len(nodes) or len(set(ids)) != len(nodes) or "" in ids:
        raise ValueError(f"node_ids must name each of the {len(nodes)} nodes once, got {ids!r}")
    return ids


def _latency_model(bundle: ServingBundle, links: dict[int, LinkProfile], config: ControllerConfig) -> LatencyModel:
    """A latency model on the bundle's profile (block times, activation sizes), before any calibration."""
    spec = bundle.model.spec
    return LatencyModel(
        bundle.block_s,
        1e-5,
        4 * int(torch.tensor(spec.in_shape).prod()),
        [4 * int(torch.tensor(s).prod()) for s in bundle.shapes],
        spec.num_classes,
        bundle.batch_size,
        links=links,
        window=config.latency_window,
        trim=config.latency_trim,
    )


class Controller:
    """Serve a :class:`ServingBundle` over inference nodes.

    Parameters
    ----------
    bundle : ServingBundle
        Model, partition, exit heads and estimates.
    nodes : sequence of str
        Addresses of the inference nodes; node ``i`` gets blocks ``[cuts[i], cuts[i + 1])``.
    secret : bytes or str
        Token secret shared with the nodes and the clients.
    objectives : Objectives, optional
        The user's failover thresholds and priorities.
    links : dict of int to LinkProfile, optional
        Emulated link to every node.
    journal : Journal, optional
        Request journal (in memory when omitted).
    host, port : str, int
        Address of the predict service (started by :meth:`start` when ``serve``).
    config : ControllerConfig, optional
        Timing and limits.
    tls : TLSConfig, optional
        Serve the predict service over TLS.
    node_root_cert : bytes, optional
        PEM root certificate of nodes that serve TLS.
    node_ids : sequence of str, optional
        Id of every node (its ``--node-id``); node ``i``'s tokens are bound to ``node_ids[i]`` and refused by every
        other node. Default: the addresses in ``nodes`` (what a node without ``--node-id`` takes as its id).

    Raises
    ------
    ValueError
        When the number of nodes does not match the bundle's partition, or ``node_ids`` does not name every node
        once.
    """

    def __init__(
        self,
        bundle: ServingBundle,
        nodes: Sequence[str],
        secret: bytes | str,
        objectives: Objectives | None = None,
        links: dict[int, LinkProfile] | None = None,
        journal: Journal | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        config: ControllerConfig | None = None,
        tls: TLSConfig | None = None,
        node_root_cert: bytes | None = None,
        node_ids: Sequence[str] | None = None,
    ) -> None:
        self.node_ids = _check_node_ids(nodes, node_ids, len(bundle.cuts) - 1)
        self.bundle = bundle
        self.config = cfg = config or ControllerConfig()
        self.links = dict(links or {})
        self.journal = journal or Journal()
        self.limits = Limits(max_message_bytes=cfg.max_message_bytes)
        self._issuer = TokenIssuer(secret)
        self.clients = [
            NodeClient(
                a,
                RenewingToken(partial(self.node_token, i), cfg.token_ttl_s),
                self.links.get(i),
                cfg.forward_timeout_s,
                node_root_cert,
                cfg.max_message_bytes,
            )
            for i, a in enumerate(nodes)
        ]
        self.latency = _latency_model(bundle, self.links, cfg)
        self.downtime = DowntimeModel(links=self.links)
        self._current = CurrentRoute(initial_route(bundle.cuts))
        self._deployer = Deployer(bundle, self.clients)
        self._failover = Failover(
            bundle,
            self._deployer,
            self._current,
            self.latency,
            self.downtime,
            objectives or Objectives(),
            len(self.clients),
        )
        self._detector = FailureDetector(self.clients, self._failover, cfg)
        self._router = Router(
            self.clients, self._current, self.latency, self._detector.suspect, cfg.request_deadline_s, cfg.heartbeat_s
        )
        self._requests = ExactlyOnce(self.journal, self._router.run, self.limits, cfg.request_deadline_s * 2)
        self._service = PredictService(
            self._requests.handle, self.status, TokenVerifier(secret), bundle.spec.in_shape, host, port, cfg, tls
        )

    def node_token(self, node: int, ttl_s: float) -> str:
        """A short-lived controller token for node ``node``, bound to its id (refused by every other node)."""
        return self._issuer.issue(0, node, 0, self.node_ids[node], ttl_s=ttl_s, role=ROLE_CONTROLLER)

    # -- state --------------------------------------------------------------------------------------------------------
    @property
    def route(self) -> Route:
        """The route requests take now."""
        return self._current.route

    @property
    def dead(self) -> frozenset[int]:
        """Indices of the nodes declared dead."""
        return self._failover.dead

    @property
    def objectives(self) -> Objectives:
        """The user's failover thresholds and priorities (may be replaced; the next failure uses the new ones)."""
        return self._failover.objectives

    @objectives.setter
    def objectives(self, value: Objectives) -> None:
        self._failover.objectives = value

    @property
    def pinned(self) -> str | None:
        """A technique applied whenever available, without consulting the objectives (operators, benchmarks)."""
        return self._failover.pinned

    @pinned.setter
    def pinned(self, value: str | None) -> None:
        self._failover.pinned = value

    @property
    def events(self) -> list[FailoverEvent]:
        """Every handled failure, oldest first."""
        return self._failover.events

    @property
    def readmissions(self) -> list[dict[str, Any]]:
        """Every re-admission of a dead node: ``{"node", "route", "seconds", "at"}``, oldest first."""
        return self._failover.readmissions

    @property
    def executed(self) -> int:
        """Requests computed by this controller (replays from the journal not counted)."""
        return self._requests.executed

    @property
    def address(self) -> str:
        """Address of the predict service (after :meth:`start` with ``serve``)."""
        return self._service.address

    @property
    def rpc_methods(self) -> frozenset[str]:
        """The RPCs the predict service serves (what a client may call)."""
        return frozenset(self._service.server.methods)

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self, serve: bool = True, calibrate: int = 3) -> Controller:
        """Deploy the initial route, calibrate the estimators, start heartbeats (and the predict service).

        Parameters
        ----------
        serve : bool
            Start the predict service too.
        calibrate : int
            Batches run through the route to learn every node's speed before serving (0: none; every relayed
            request refines it anyway).
        """
        calibrate_downtime(self._deployer, self._current, self.downtime)
        self.latency.hop_s = measure_hop(self.clients, self.config.heartbeat_timeout_s * 4)  # until relayed through
        if calibrate:
            x = torch.zeros(self.bundle.batch_size, *self.bundle.spec.in_shape)
            calibrate_routes(self._router, self.route, x, calibrate)
        log(
            INFO,
            "controller: %d nodes deployed (version %s), hop %.2f ms, deploy %.1f ms + %.2g s/B",
            len(self.clients),
            self.route.version,
            self.latency.hop_s * 1e3,
            self.downtime.fixed_s * 1e3,
            self.downtime.per_byte_s,
        )
        pending = self.journal.pending
        if pending:
            log(WARNING, "controller: %d requests accepted before a restart are unanswered: %s", len(pending), pending)
        self._detector.start()
        if serve:  # the server logs "controller serving on ADDRESS (...)"; `edgeflower serve` prints its ready line
            self._service.start()
        return self

    def stop(self) -> None:
        """Stop heartbeats and the predict service; close channels and the journal. Idempotent."""
        self._detector.stop()
        self._service.stop()
        for client in self.clients:
            client.close()
        self.journal.close()

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- deployment and failover --------------------------------------------------------------------------------------
    def deploy_bytes(self, start: int, stop: int) -> int:
        """Weight bytes of blocks ``[start, stop)`` and the exit head at ``stop`` (if any)."""
        return self._deployer.segment_bytes(start, stop)

    def alive(self) -> list[int]:
        """Indices of the nodes not declared dead."""
        return self._failover.alive()

    def candidates(self, failed: int, route: Route | None = None) -> list[tuple[Candidate, Route]]:
        """The failover options for ``failed`` with their estimates (``route`` defaults to the current one)."""
        return self._failover.candidates(failed, route)

    def fail_over(self, failed: int, detected_by: str) -> FailoverEvent | None:
        """Declare ``failed`` dead and switch to the option the objectives demand (no-op if already dead).

        When :attr:`pinned` names a technique available for this failure, that technique is applied instead.
        """
        return self._failover.fail_over(failed, detected_by)

    def readmit(self, node: int) -> Route | None:
        """Take ``node``, declared dead, back (it answers heartbeats again) and re-plan: with every node alive the
        bundle's own partition, else a repartition over the live ones, deployed under a new version.

        Returns the new route, or ``None`` if ``node`` was not dead or the re-plan could not be deployed (the node
        then stays dead and the current route serves on).
        """
        return self._detector.readmit(node)

    # -- requests -----------------------------------------------------------------------------------------------------
    def run_route(self, route: Route, request_id: str, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """Run ``x`` through ``route`` once (no retry, no journal); its timings calibrate the latency model unless
        ``observe`` is false."""
        return self._router.run_route(route, request_id, x, observe)

    def run(self, request_id: str, x: torch.Tensor) -> tuple[torch.Tensor, Route]:
        """Run ``x`` through the current route, re-running it on the new route whenever the route breaks."""
        return self._router.run(request_id, x)

    def handle(self, request_id: str, x: torch.Tensor, client: int | None = None) -> bytes:
        """Answer request ``request_id`` of ``client`` (a client token's node id; ``None``: unscoped) exactly once
        (journalled); return the ``prediction`` frame."""
        return self._requests.handle(request_id, x, client)

    def route_latencies(self, version: str | None = None) -> list[float]:
        """Seconds of the last (up to 1024) requests served through route ``version`` (default: the current one)."""
        return self._router.route_latencies(version or self.route.version)

    def status(self, client: int | None = None) -> dict[str, Any]:
        """Route, live nodes, the current route's median and estimated latency, pending entries, failover events.

        ``client``: the pending request ids are that client's only (the ``Status`` RPC passes the caller's);
        ``None`` lists every pending journal key (``"<client>/<request id>"``).
        """
        route = self.route
        pending = self.journal.pending
        if client is not None:
            prefix = journal_key(client, "")
            pending = [key[len(prefix) :] for key in pending if key.startswith(prefix)]
        served = self.route_latencies(route.version)
        return {
            "technique": route.technique,
            "route": route.describe(),
            "latency_ms": statistics.median(served) * 1e3 if served else None,
            "estimated_latency_ms": self.latency.estimate(route) * 1e3,
            "estimated_batch": self.latency.served_batch(),  # the batch size the estimates are made at
            "alive": self.alive(),
            "pending": pending,
            "executed": self.executed,
            "events": [asdict(e) for e in self.events],
            "readmissions": self.readmissions,
        }
