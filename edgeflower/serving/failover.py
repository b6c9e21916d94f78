"""Failover: which nodes are dead, the options when one dies, switching to the chosen one, and re-admission.

When a node on the route dies, every technique that can serve without it is a :class:`Candidate` with estimated
accuracy (the bundle's table), latency (:class:`~edgeflower.serving.estimators.LatencyModel`) and downtime
(:class:`~edgeflower.serving.estimators.DowntimeModel`): **repartition** over the live nodes (always, while one is
left), and from the bundle's own partition also **early exit** before the dead node and **skip** of it where the
bundle measured their accuracy. :func:`~edgeflower.serving.selection.select` picks the one the user's objectives
demand, unless an operator pinned a technique. A dead node that answers again is re-admitted and the route
re-planned (:meth:`Failover.readmit`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.common.logger import log

from edgeflower.serving.bundle import ServingBundle
from edgeflower.serving.deploy import Deployer
from edgeflower.serving.estimators import DowntimeModel, LatencyModel
from edgeflower.serving.plan import Route, early_exit_route, initial_route, new_version, repartition_route, skip_route
from edgeflower.serving.routing import CurrentRoute
from edgeflower.serving.selection import Candidate, Objectives, Selection, select
from edgeflower.transport.errors import EdgeError

__all__ = ["Failover", "FailoverEvent"]


@dataclass
class FailoverEvent:
    """One handled node failure.

    Attributes
    ----------
    node : int
        The dead node.
    detected_by : str
        What noticed it (``"heartbeat"``, ``"request"``, or a caller's word).
    technique : str
        The technique switched to.
    meets_objectives : bool
        Whether it meets every threshold of the objectives.
    selection_ms : float
        Time to estimate the options and choose.
    downtime_s : float
        Time to switch (deploy, if repartitioning, and swap the route).
    estimates : list of dict
        Every option considered, as :class:`Candidate` fields.
    route : list of list
        The new route, as :meth:`Route.describe` gives it.
    at : float
        Unix time of the event.
    """

    node: int
    detected_by: str
    technique: str
    meets_objectives: bool
    selection_ms: float
    downtime_s: float
    estimates: list[dict[str, Any]]
    route: list[list[int | bool]]
    at: float = field(default_factory=time.time)


class Failover:
    """Declare nodes dead, switch to the failover option the objectives demand, take nodes back.

    Parameters
    ----------
    bundle : ServingBundle
        Partition, exit heads, accuracy table and block times.
    deployer : Deployer
        Deploys the stages of a new route.
    current : CurrentRoute
        The route requests take; swapped on every switch.
    latency, downtime : LatencyModel, DowntimeModel
        The estimators of each option's latency and downtime.
    objectives : Objectives
        The user's thresholds and priorities.
    num_nodes : int
        Number of nodes (indices ``0 .. num_nodes - 1``).

    Attributes
    ----------
    objectives : Objectives
        May be replaced at any time; the next failure is decided on the new ones.
    pinned : str or None
        A technique to apply whenever it is available, without consulting the objectives (operators, benchmarks).
    """

    def __init__(
        self,
        bundle: ServingBundle,
        deployer: Deployer,
        current: CurrentRoute,
        latency: LatencyModel,
        downtime: DowntimeModel,
        objectives: Objectives,
        num_nodes: int,
    ) -> None:
        self.bundle = bundle
        self.deployer = deployer
        self.current = current
        self.latency = latency
        self.downtime = downtime
        self.objectives = objectives
        self.num_nodes = num_nodes
        self.pinned: str | None = None
        self._shapes = bundle.shapes
        self._dead: set[int] = set()
        self._events: list[FailoverEvent] = []
        self._readmissions: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def dead(self) -> frozenset[int]:
        """Indices of the nodes declared dead."""
        return frozenset(self._dead)

    @property
    def events(self) -> list[FailoverEvent]:
        """Every handled failure, oldest first."""
        return list(self._events)

    @property
    def readmissions(self) -> list[dict[str, Any]]:
        """Every re-admission: ``{"node", "route", "seconds", "at"}``, oldest first."""
        return list(self._readmissions)

    def alive(self) -> list[int]:
        """Indices of the nodes not declared dead."""
        return [i for i in range(self.num_nodes) if i not in self._dead]

    # -- options ------------------------------------------------------------------------------------------------------
    def candidates(self, failed: int, route: Route | None = None) -> list[tuple[Candidate, Route]]:
        """The failover options for ``failed`` with their estimates (``route`` defaults to the current one)."""
        route = route or self.current.route
        out = self._repartition_option(failed)
        if route.technique == "initial":  # early exit and skip are measured on the bundle's own partition
            out += self._local_options(route, failed)
        return out

    def _repartition_option(self, failed: int) -> list[tuple[Candidate, Route]]:
        alive = [i for i in self.alive() if i != failed]
        if not alive:
            return []
        planned = repartition_route(self.bundle.block_s, alive)
        route = Route(new_version(), planned.stages, planned.technique, planned.cuts)
        nbytes = {s.node: self.deployer.segment_bytes(s.start, s.stop) for s in route.stages}
        cand = Candidate(
            "repartition", self.bundle.accuracy["full"], self.latency.estimate(route), self.downtime.estimate(nbytes)
        )
        return [(cand, route)]

    def _local_options(self, route: Route, failed: int) -> list[tuple[Candidate, Route]]:
        """Early exit before ``failed`` and skipping it: nothing to deploy, a route swap."""
        routes = {
            "early_exit": early_exit_route(route, failed, list(self.bundle.exits)),
            "skip": skip_route(route, failed, self._shapes, self.bundle.spec.in_shape),
        }
        out = []
        for technique, option in routes.items():
            accuracy = self.bundle.accuracy.get(f"{technique}:{failed}")
            if option is not None and accuracy is not None:
                cand = Candidate(technique, accuracy, self.latency.estimate(option), self.downtime.estimate({}))
                out.append((cand, option))
        return out

    def _choose(self, options: list[tuple[Candidate, Route]]) -> Selection:
        sel = select([c for c, _ in options], self.objectives)
        pinned = [c for c, _ in options if c.technique == self.pinned]
        if pinned:  # an operator (or a benchmark) pinned the technique: the objectives are not consulted
            return Selection(pinned[0], sel.meets_objectives and sel.chosen is pinned[0], sel.seconds, sel.considered)
        return sel

    # -- switching ----------------------------------------------------------------------------------------------------
    def _switch(self, route: Route) -> None:
        if route.technique == "repartition":
            self.deployer.deploy_route(route)
        self.current.swap(route)

    def fail_over(self, failed: int, detected_by: str) -> FailoverEvent | None:
        """Declare ``failed`` dead and switch to the option the objectives demand.

        When :attr:`pinned` names a technique available for this failure, that technique is applied instead.

        Returns
        -------
        FailoverEvent or None
            The handled failure; ``None`` when ``failed`` was dead already, was not on the route, or no node is
            left.
        """
        with self._lock:
            if failed in self._dead:
                return None
            route = self.current.route
            t0 = time.perf_counter()
            options = self.candidates(failed, route)
            self._dead.add(failed)
            if failed not in route.nodes():
                log(WARNING, "controller: node %d (not on the route) is dead", failed)
                return None
            if not options:
                log(WARNING, "controller: node %d died and no node is left", failed)
                return None
            sel = self._choose(options)
            chosen = next(r for c, r in options if c is sel.chosen)
            selection_ms = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            self._switch(chosen)
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
            self._events.append(event)
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

    # -- re-admission -------------------------------------------------------------------------------------------------
    def _replan(self, alive: list[int]) -> Route:
        """With every node alive the bundle's own partition, else a repartition over ``alive``; a new version."""
        if len(alive) == self.num_nodes:
            planned = initial_route(self.bundle.cuts)
            return Route(new_version(), planned.stages, "initial", planned.cuts)
        planned = repartition_route(self.bundle.block_s, alive)
        return Route(new_version(), planned.stages, planned.technique, planned.cuts)

    def readmit(self, node: int) -> Route | None:
        """Take ``node``, declared dead, back (it answers heartbeats again) and re-plan: with every node alive the
        bundle's own partition, else a repartition over the live ones, deployed under a new version.

        Returns
        -------
        Route or None
            The new route, or ``None`` if ``node`` was not dead or the re-plan could not be deployed (the node
            then stays dead and the current route serves on).
        """
        with self._lock:
            if node not in self._dead:
                return None
            route = self._replan(sorted([*self.alive(), node]))
            t0 = time.perf_counter()
            try:
                self.deployer.deploy_route(route)
            except EdgeError as exc:
                log(WARNING, "controller: node %d answers again but re-planning failed: %s", node, exc)
                return None
            self._dead.discard(node)
            self.current.swap(route)
            seconds = time.perf_counter() - t0
            self._readmissions.append({"node": node, "route": route.describe(), "seconds": seconds, "at": time.time()})
        log(INFO, "controller: node %d answers heartbeats again: re-admitted, re-planned in %.3f s", node, seconds)
        return route
