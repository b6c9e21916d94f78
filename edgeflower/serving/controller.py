"""The serving controller: deploys a bundle over a chain of inference nodes, routes predictions through it,
detects dead nodes with heartbeats and fails over with the technique the user's objectives demand.

Exactly-once answers: every request carries a client-chosen id. The controller journals it as accepted before
running it and as answered (with the whole reply) before replying (:class:`~edgeflower.serving.journal.Journal`).
A request whose route breaks mid-way (a node died, or the route changed under it) is re-run on the new route
inside the controller; a duplicate of a request in flight waits for the first one; a request already answered is
replayed from the journal, also after a controller restart. So a client that retries by id until it gets an
answer (:class:`~edgeflower.serving.client.ServingClient`) gets exactly one answer per request, computed once.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from functools import partial
from logging import INFO, WARNING
from types import TracebackType
from typing import Any

import grpc
import torch
from flwr.common.logger import log

from edgeflower.serving.bundle import ServingBundle
from edgeflower.serving.estimators import DowntimeModel, LatencyModel
from edgeflower.serving.journal import Journal
from edgeflower.serving.nodeclient import NodeClient, tensor_bytes
from edgeflower.serving.plan import (
    Route,
    Stage,
    early_exit_route,
    initial_route,
    new_version,
    repartition_route,
    skip_route,
)
from edgeflower.serving.protocol import CONTROLLER_SERVICE, check_request_id, expect
from edgeflower.serving.protocol import field as meta_field
from edgeflower.serving.rpc import GrpcServer, ServerOptions, Unary
from edgeflower.serving.selection import Candidate, Objectives, Selection, select
from edgeflower.transport.auth import ROLE_CONTROLLER, RPC_ROLES, RenewingToken, TokenIssuer, TokenVerifier
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, decode_frame, encode_frame
from edgeflower.transport.emulation import LinkProfile
from edgeflower.transport.errors import (
    EdgeError,
    EdgeUnavailableError,
    InvalidMessageError,
    SessionStateError,
)
from edgeflower.transport.tls import TLSConfig

__all__ = ["Controller", "ControllerConfig", "FailoverEvent"]


@dataclass(frozen=True)
class ControllerConfig:
    """Timing and limits of the controller.

    Attributes
    ----------
    heartbeat_s : float
        Interval between heartbeats to every live node.
    heartbeat_timeout_s : float
        Deadline of one heartbeat.
    misses : int
        Consecutive missed heartbeats that declare a node dead.
    forward_timeout_s : float
        Deadline of one stage.
    request_deadline_s : float
        A request that finds no working route within this long fails with ``UNAVAILABLE``.
    max_batch : int
        Largest batch in one predict request.
    workers : int
        gRPC worker threads of the predict service.
    max_message_bytes : int
        Largest message.
    latency_window : int
        Relayed forwards per node the latency model learns from (the most recent ones).
    latency_trim : float
        Share of those forwards dropped at each end before averaging the node's speed and overhead.
    token_ttl_s : float
        Lifetime of the controller's node tokens (renewed when half of it is left).
    readmit_every : int
        A dead node is pinged every this many heartbeats; one that answers is re-admitted and the controller
        re-plans its route.
    insecure : bool
        Allow the predict service plaintext on a non-loopback address (with a WARNING).
    first_message_s : float
        A call must deliver its request within this long (half-open calls are answered ``DEADLINE_EXCEEDED``).
    """

    heartbeat_s: float = 0.2
    heartbeat_timeout_s: float = 0.5
    misses: int = 2
    forward_timeout_s: float = 10.0
    request_deadline_s: float = 30.0
    max_batch: int = 1024
    workers: int = 16
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    latency_window: int = 64
    latency_trim: float = 0.25
    token_ttl_s: float = 300.0
    readmit_every: int = 5
    insecure: bool = False
    first_message_s: float = 5.0


@dataclass
class FailoverEvent:
    """One handled node failure."""

    node: int
    detected_by: str
    technique: str
    meets_objectives: bool
    selection_ms: float
    downtime_s: float
    estimates: list[dict[str, Any]]
    route: list[list[int | bool]]
    at: float = field(default_factory=time.time)


def _sha(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b"").hexdigest()


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
        if len(nodes) != len(bundle.cuts) - 1:
            raise ValueError(f"the bundle's partition has {len(bundle.cuts) - 1} parts, {len(nodes)} nodes given")
        self.node_ids = [str(a) for a in (nodes if node_ids is None else node_ids)]
        if len(self.node_ids) != len(nodes) or len(set(self.node_ids)) != len(nodes) or "" in self.node_ids:
            raise ValueError(f"node_ids must name each of the {len(nodes)} nodes once, got {self.node_ids!r}")
        self.bundle = bundle
        self.config = config or ControllerConfig()
        self.objectives = objectives or Objectives()
        self.links = dict(links or {})
        self.journal = journal or Journal()
        self.limits = Limits(max_message_bytes=self.config.max_message_bytes)
        self._issuer = TokenIssuer(secret)
        self._verifier = TokenVerifier(secret)
        cfg = self.config
        self.readmissions: list[dict[str, Any]] = []
        self.clients = [
            NodeClient(
                a,
                RenewingToken(partial(self._node_token, i), cfg.token_ttl_s),
                self.links.get(i),
                cfg.forward_timeout_s,
                node_root_cert,
                cfg.max_message_bytes,
            )
            for i, a in enumerate(nodes)
        ]
        self.dead: set[int] = set()
        self.pinned: str | None = None
        self.events: list[FailoverEvent] = []
        self.route = initial_route(bundle.cuts)
        self._shapes = bundle.shapes
        model = bundle.model
        self.latency = LatencyModel(
            bundle.block_s,
            1e-5,
            4 * int(torch.tensor(model.spec.in_shape).prod()),
            [4 * int(torch.tensor(s).prod()) for s in self._shapes],
            model.spec.num_classes,
            bundle.batch_size,
            links=self.links,
            window=cfg.latency_window,
            trim=cfg.latency_trim,
        )
        self.downtime = DowntimeModel(links=self.links)
        self._lock = threading.Lock()
        self._failover_lock = threading.Lock()
        self._route_changed = threading.Condition()
        self._inflight: dict[str, Future[bytes]] = {}
        self._misses: dict[int, int] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.executed = 0
        self._route_s: dict[str, deque[float]] = {}
        self._server = GrpcServer(
            CONTROLLER_SERVICE,
            {"Predict": Unary(self._predict_rpc), "Status": Unary(self._status_rpc, control=True)},
            "controller",
            host,
            port,
            cfg.workers,
            cfg.max_message_bytes,
            tls,
            ServerOptions(first_message_s=cfg.first_message_s),
            cfg.insecure,
            "client tokens, inputs and predictions",
        )

    def _node_token(self, node: int, ttl_s: float) -> str:
        """A short-lived controller token for node ``node``, bound to its id (refused by every other node)."""
        return self._issuer.issue(0, node, 0, self.node_ids[node], ttl_s=ttl_s, role=ROLE_CONTROLLER)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """Address of the predict service (after :meth:`start` with ``serve``)."""
        return self._server.address

    def start(self, serve: bool = True, calibrate: int = 3) -> Controller:
        """Deploy the initial route, calibrate the estimators, start heartbeats (and the predict service)."""
        for stage in self.route.stages:  # the first deployment pays one-off costs (lazy imports, allocator)
            self._deploy(stage.node, self.route.version, stage.start, stage.stop)
        samples = [self._deploy(s.node, self.route.version, s.start, s.stop) for s in self.route.stages]
        self.downtime.calibrate(samples)  # fitted on the second, warm deployment
        swaps = []
        for _ in range(5):  # a switch that deploys nothing (early exit, skip) is a route swap under the lock
            t0 = time.perf_counter()
            self._apply(self.route)
            swaps.append(time.perf_counter() - t0)
        self.downtime.switch_s = statistics.median(swaps)
        rtts = []
        for client in self.clients:
            for _ in range(5):
                t0 = time.perf_counter()
                client.ping(self.config.heartbeat_timeout_s * 4)
                rtts.append(time.perf_counter() - t0)
        self.latency.hop_s = statistics.median(rtts)  # for nodes the controller has not relayed through yet
        if calibrate:  # a first calibration; every relayed request refines it
            x = torch.zeros(self.bundle.batch_size, *self.bundle.spec.in_shape)
            # the first forward through a fresh deployment pays one-off costs (kernels, allocator): measured, it
            # made a route look several times slower than it serves, and a failover decided on that estimate
            self._run_route(self.route, "warm-up", x, observe=False)
            for i in range(calibrate):
                self._run_route(self.route, f"calibrate-{i}", x)
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
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._heartbeats, name="edgeflower-heartbeat", daemon=True)
        self._heartbeat.start()
        if serve:  # the server logs "controller serving on ADDRESS (...)"; `edgeflower serve` prints its ready line
            self._server.start()
        return self

    def stop(self) -> None:
        """Stop heartbeats and the predict service; close channels and the journal. Idempotent."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(10)
            self._heartbeat = None
        self._server.stop()
        for client in self.clients:
            client.close()
        self.journal.close()

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- deployment ---------------------------------------------------------------------------------------------------
    def _segment_tensors(self, start: int, stop: int) -> tuple[dict[str, torch.Tensor], dict | None]:
        state = self.bundle.model.segment(start, stop, share=True).state_dict()
        head = self.bundle.exits.get(stop)
        return state, (head.state_dict() if head is not None else None)

    def deploy_bytes(self, start: int, stop: int) -> int:
        """Weight bytes of blocks ``[start, stop)`` and the exit head at ``stop`` (if any)."""
        state, exit_state = self._segment_tensors(start, stop)
        return sum(tensor_bytes(t) for t in [*state.values(), *(exit_state or {}).values()])

    def _deploy(self, node: int, version: str, start: int, stop: int) -> tuple[int, float]:
        state, exit_state = self._segment_tensors(start, stop)
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

    def _apply(self, route: Route) -> None:
        if route.technique == "repartition":
            for stage in route.stages:
                self._deploy(stage.node, route.version, stage.start, stage.stop)
        with self._route_changed:
            self.route = route
            self._route_changed.notify_all()

    # -- failover -----------------------------------------------------------------------------------------------------
    def alive(self) -> list[int]:
        """Indices of the nodes not declared dead."""
        return [i for i in range(len(self.clients)) if i not in self.dead]

    def candidates(self, failed: int, route: Route | None = None) -> list[tuple[Candidate, Route]]:
        """The failover options for ``failed`` with their estimates."""
        route = route or self.route
        acc = self.bundle.accuracy
        alive = [i for i in self.alive() if i != failed]
        out: list[tuple[Candidate, Route]] = []
        if alive:
            rep = repartition_route(self.bundle.block_s, alive)
            rep = Route(new_version(), rep.stages, rep.technique, rep.cuts)
            nbytes = {s.node: self.deploy_bytes(s.start, s.stop) for s in rep.stages}
            out.append(
                (Candidate("repartition", acc["full"], self.latency.estimate(rep), self.downtime.estimate(nbytes)), rep)
            )
        if route.technique == "initial":
            ee = early_exit_route(route, failed, list(self.bundle.exits))
            if ee is not None and f"early_exit:{failed}" in acc:
                est = Candidate(
                    "early_exit", acc[f"early_exit:{failed}"], self.latency.estimate(ee), self.downtime.estimate({})
                )
                out.append((est, ee))
            sk = skip_route(route, failed, self._shapes, self.bundle.spec.in_shape)
            if sk is not None and f"skip:{failed}" in acc:
                est = Candidate("skip", acc[f"skip:{failed}"], self.latency.estimate(sk), self.downtime.estimate({}))
                out.append((est, sk))
        return out

    def fail_over(self, failed: int, detected_by: str) -> FailoverEvent | None:
        """Declare ``failed`` dead and switch to the option the objectives demand (no-op if already dead).

        When :attr:`pinned` names a technique available for this failure, that technique is applied instead.
        """
        with self._failover_lock:
            if failed in self.dead:
                return None
            route = self.route
            t0 = time.perf_counter()
            options = self.candidates(failed, route)
            self.dead.add(failed)
            if failed not in route.nodes():
                log(WARNING, "controller: node %d (not on the route) is dead", failed)
                return None
            if not options:
                log(WARNING, "controller: node %d died and no node is left", failed)
                return None
            sel = select([c for c, _ in options], self.objectives)
            pinned = [o for o in options if o[0].technique == self.pinned]
            if pinned:  # an operator (or a benchmark) pinned the technique: the objectives are not consulted
                sel = Selection(
                    pinned[0][0], sel.meets_objectives and sel.chosen is pinned[0][0], sel.seconds, sel.considered
                )
            chosen = next(r for c, r in options if c is sel.chosen)
            selection_ms = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            self._apply(chosen)
            downtime = time.perf_counter() - t1
            event = FailoverEvent(
                failed,
                detected_by,
                sel.chosen.technique,
                sel.meets_objectives,
                selection_ms,
                downtime,
                [asdict(c) for c, _ in options],
                chosen.describe(),
            )
            self.events.append(event)
            log(
                INFO,
                "controller: node %d dead (%s): %s chosen in %.2f ms (meets objectives: %s), downtime %.3f s",
                failed,
                detected_by,
                event.technique,
                selection_ms,
                sel.meets_objectives,
                downtime,
            )
            return event

    def _suspect(self, node: int, version: str, why: str) -> None:
        """A forward to ``node`` failed: confirm with a heartbeat, then fail over."""
        if node in self.dead:
            return
        try:
            self.clients[node].ping(self.config.heartbeat_timeout_s)
        except EdgeError:
            self.fail_over(node, why)

    def _heartbeats(self) -> None:
        cfg = self.config
        beat = 0
        while not self._stop.wait(cfg.heartbeat_s):
            beat += 1
            for node in self.alive():
                try:
                    self.clients[node].ping(cfg.heartbeat_timeout_s)
                    self._misses[node] = 0
                except EdgeError:
                    self._misses[node] = self._misses.get(node, 0) + 1
                    if self._misses[node] >= cfg.misses:
                        self.fail_over(node, "heartbeat")
            if beat % max(cfg.readmit_every, 1) == 0:
                for node in sorted(self.dead):
                    try:
                        self.clients[node].ping(cfg.heartbeat_timeout_s)
                    except EdgeError:
                        continue
                    self.readmit(node)

    def readmit(self, node: int) -> Route | None:
        """Take ``node``, declared dead, back (it answers heartbeats again) and re-plan: with every node alive the
        bundle's own partition, else a repartition over the live ones, deployed under a new version.

        Returns the new route, or ``None`` if ``node`` was not dead or the re-plan could not be deployed (the node
        then stays dead and the current route serves on).
        """
        with self._failover_lock:
            if node not in self.dead:
                return None
            alive = sorted([*self.alive(), node])
            if len(alive) == len(self.clients):
                planned = initial_route(self.bundle.cuts)
                route = Route(new_version(), planned.stages, "initial", planned.cuts)
            else:
                rep = repartition_route(self.bundle.block_s, alive)
                route = Route(new_version(), rep.stages, rep.technique, rep.cuts)
            t0 = time.perf_counter()
            try:
                for stage in route.stages:
                    self._deploy(stage.node, route.version, stage.start, stage.stop)
            except EdgeError as exc:
                log(WARNING, "controller: node %d answers again but re-planning failed: %s", node, exc)
                return None
            self.dead.discard(node)
            self._misses[node] = 0
            with self._route_changed:
                self.route = route
                self._route_changed.notify_all()
            seconds = time.perf_counter() - t0
            self.readmissions.append({"node": node, "route": route.describe(), "seconds": seconds, "at": time.time()})
            log(INFO, "controller: node %d answers heartbeats again: re-admitted, re-planned in %.3f s", node, seconds)
            return route

    # -- routing ------------------------------------------------------------------------------------------------------
    def _forward(
        self, route: Route, stage: Stage, request_id: str, h: torch.Tensor, observe: bool = True
    ) -> torch.Tensor:
        """One stage of a request; its timing calibrates the latency model (unless ``observe`` is false)."""
        t0 = time.perf_counter()
        y, compute_s = self.clients[stage.node].forward_timed(route.version, request_id, h, stage.exit)
        if observe:
            self.latency.observe(stage.node, stage, h.shape[0], time.perf_counter() - t0, compute_s)
        return y

    def _run_route(self, route: Route, request_id: str, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        h = x
        for stage in route.stages:
            h = self._forward(route, stage, request_id, h, observe)
        return h

    def run(self, request_id: str, x: torch.Tensor) -> tuple[torch.Tensor, Route]:
        """Run ``x`` through the current route, re-running it on the new route whenever the route breaks."""
        deadline = time.monotonic() + self.config.request_deadline_s
        self.latency.record_request(int(x.shape[0]))  # estimates are made at the batch clients send
        while True:
            route = self.route
            node = -1
            t0 = time.perf_counter()
            try:
                h = x
                for stage in route.stages:
                    node = stage.node
                    h = self._forward(route, stage, request_id, h)
                self._route_s.setdefault(route.version, deque(maxlen=1024)).append(time.perf_counter() - t0)
                return h, route
            except EdgeUnavailableError as exc:
                log(WARNING, "controller: request %s: node %d unavailable (%s)", request_id, node, exc.code.name)
                self._suspect(node, route.version, "request")
            except SessionStateError:
                pass  # the route changed under the request
            if time.monotonic() > deadline:
                raise EdgeUnavailableError(f"request {request_id}: no working route within the deadline")
            with self._route_changed:
                if self.route.version == route.version and self.route.stages == route.stages:
                    self._route_changed.wait(self.config.heartbeat_s)

    def route_latencies(self, version: str | None = None) -> list[float]:
        """Seconds of the last (up to 1024) requests served through route ``version`` (default: the current one)."""
        return list(self._route_s.get(version or self.route.version, ()))

    def handle(self, request_id: str, x: torch.Tensor) -> bytes:
        """Answer request ``request_id`` exactly once (journalled); return the ``prediction`` frame."""
        check_request_id(request_id)
        sha = _sha(x)
        with self._lock:
            cached = self.journal.answers.get(request_id)
            known = self.journal.accepted.get(request_id)
            if known is not None and known != sha:
                raise InvalidMessageError(f"request id {request_id!r} was already used for a different input")
            if cached is not None:
                frame = decode_frame(cached, self.limits)
                return encode_frame(frame.kind, {**frame.meta, "replayed": True}, frame.tensors)
            fut = self._inflight.get(request_id)
            owner = fut is None
            if fut is None:
                fut = self._inflight[request_id] = Future()
        if not owner:
            return fut.result(self.config.request_deadline_s * 2)
        try:
            recovered = known is not None
            if not recovered:
                self.journal.accept(request_id, sha)
            logits, route = self.run(request_id, x)
            self.executed += 1
            meta = {
                "request_id": request_id,
                "technique": route.technique,
                "route_version": route.version,
                "replayed": False,
                "recovered": recovered,
            }
            reply = encode_frame("prediction", meta, {"logits": logits}, self.limits)
            self.journal.answer(request_id, reply)
            fut.set_result(reply)
            return reply
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(request_id, None)

    # -- RPCs -------------------------------------------------------------------------------------------------------
    def _predict_rpc(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        frame = expect(decode_frame(request, self.limits), "predict", ("x",))
        self._verifier.verify(meta_field(frame, "token", str), roles=RPC_ROLES["controller/Predict"])
        request_id = check_request_id(meta_field(frame, "request_id", str))
        x = frame.tensors["x"]
        shape = tuple(self.bundle.spec.in_shape)
        if x.dtype != torch.float32 or tuple(x.shape[1:]) != shape or not 0 < len(x) <= self.config.max_batch:
            raise InvalidMessageError(
                f"x must be float32 of shape [1..{self.config.max_batch}, {', '.join(map(str, shape))}], "
                f"got {x.dtype} {list(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise InvalidMessageError("x contains NaN or Inf")
        return self.handle(request_id, x)

    def status(self) -> dict[str, Any]:
        """Route, live nodes, the current route's median and estimated latency, pending entries, failover events."""
        served = self.route_latencies()
        return {
            "technique": self.route.technique,
            "route": self.route.describe(),
            "latency_ms": statistics.median(served) * 1e3 if served else None,
            "estimated_latency_ms": self.latency.estimate(self.route) * 1e3,
            "estimated_batch": self.latency.served_batch(),  # the batch size the estimates are made at
            "alive": self.alive(),
            "pending": self.journal.pending,
            "executed": self.executed,
            "events": [asdict(e) for e in self.events],
            "readmissions": list(self.readmissions),
        }

    def _status_rpc(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        frame = expect(decode_frame(request, self.limits), "status")
        self._verifier.verify(meta_field(frame, "token", str), roles=RPC_ROLES["controller/Status"])
        return encode_frame("status_info", self.status())
