"""A device that moves to another edge server mid-round (FedFly), and the restart baseline.

A :class:`MoveOrder` says before which batch the device moves, to which edge server, with which migration token
(issued by the ServerApp for that destination), and how:

* ``"migrate"`` (FedFly): at the batch boundary the device detaches its training stream, asks the source edge
  server to migrate the session, and continues on the destination from the next batch. The server-side state
  (tail, optimizer momentum, progress) moves edge-to-edge; the device's model and data never move. If the source
  dies right after the destination acknowledged, the device finds its session on the destination with
  ``Resume`` (otherwise the source's reply relays the destination's description of it: no extra round trip); if
  the migration fails before that, the trainer falls back to local training (progress kept).
* ``"restart"`` (the state of the art before FedFly): the source's progress is discarded and the round restarts
  from its first batch on the destination, from the round-start weights.

The device's own model, optimizer and data never move, so a migrated round ends with the same weights as an
unmoved one.

A trainer (:class:`~edgeflower.device.split.SplitTrainer`) receives its ``move_order`` and ``move_trigger`` at
construction, checks them between batches and carries a move out with :func:`migrate_session` (or raises
:class:`RestartRound`); :func:`train_with_restart` runs its passes so that a restart replays the round on the
destination.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from logging import DEBUG, INFO, WARNING
from typing import Any

import torch
from flwr.common.logger import log

from edgeflower.device.sessions import EdgeSessions
from edgeflower.transport.client import EdgeClient, SessionHandle
from edgeflower.transport.errors import EdgeUnavailableError, SessionNotFoundError

__all__ = [
    "MOVE_MODES",
    "Move",
    "MoveOrder",
    "MoveTrigger",
    "RestartRound",
    "migrate_session",
    "parse_mobility",
    "train_with_restart",
    "write_trigger",
]

MOVE_MODES = ("migrate", "restart")
"""How a device moves: ``migrate`` (FedFly) or ``restart`` (the baseline); run-config key ``mobility-mode``."""

_ENTRY = re.compile(r"^\s*(\d+)\s*@\s*(\d+)\s*:\s*([0-9.]+)\s*->\s*(\d+)\s*$")


@dataclass(frozen=True)
class Move:
    """One scheduled move: node position, round, fraction of the round done, destination edge index."""

    node: int
    server_round: int
    fraction: float
    edge: int


def parse_mobility(spec: str) -> list[Move]:
    """Parse a ``mobility`` run-config value; ``ValueError`` on bad entries.

    ``"0@2:0.5->1, 3@4:0.9->0"`` means: the node at position 0 (nodes sorted by id) moves in round 2 after 50 % of
    its batches to edge server 1; the node at position 3 moves in round 4 after 90 % to edge server 0.
    """
    moves = []
    for item in (s for s in spec.split(",") if s.strip()):
        match = _ENTRY.match(item)
        if not match:
            raise ValueError(
                f"bad mobility entry {item.strip()!r}: expected NODE@ROUND:FRACTION->EDGE, e.g. 0@2:0.5->1"
            )
        node, rnd, frac, edge = int(match[1]), int(match[2]), float(match[3]), int(match[4])
        if not 0.0 <= frac < 1.0 or rnd < 1:
            raise ValueError(f"bad mobility entry {item.strip()!r}: round must be >= 1 and fraction in [0, 1)")
        moves.append(Move(node, rnd, frac, edge))
    return moves


@dataclass
class MoveOrder:
    """Move to ``destination`` before batch ``at_batch``.

    Attributes
    ----------
    at_batch : int
        The first batch trained on the destination.
    destination : str
        ``host:port`` of the destination edge server.
    token : str
        Migration token for the destination (same run, node and round).
    mode : str
        ``"migrate"`` or ``"restart"``.
    connect : callable, optional
        ``address -> EdgeClient`` (TLS settings ...); plain :class:`EdgeClient` by default.
    report : dict
        Filled in by a migration: ``migration-s`` (device-visible move time), ``migration-bytes``,
        ``migration-resumed``; by a restart: ``restart-s`` (the discarded attempt's seconds) and
        ``restart-batches`` (the batches it had trained).
    """

    at_batch: int
    destination: str
    token: str
    mode: str = "migrate"
    connect: Callable[[str], EdgeClient] | None = None
    report: dict[str, float] = field(default_factory=dict)
    _ready: EdgeClient | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MOVE_MODES:
            raise ValueError(f"unknown move mode {self.mode!r}: expected one of {', '.join(MOVE_MODES)}")
        if self.at_batch < 0:
            raise ValueError(f"at_batch must be >= 0, got {self.at_batch}")

    def client(self) -> EdgeClient:
        """A new client of the destination."""
        return (self.connect or EdgeClient)(self.destination)

    def due(self, batch: int) -> bool:
        """Whether the move is due before ``batch`` (a batch ahead of a migration: :meth:`prepare`)."""
        if self.migrates_after(batch):
            self.prepare()
        return batch == self.at_batch

    def migrates_after(self, batch: int) -> bool:
        """Whether this is a migration right after ``batch`` (the device ends its training stream once the batch's
        result is in, and connects to the destination before the batch)."""
        return self.mode == "migrate" and batch == self.at_batch - 1

    def prepare(self) -> None:
        """Start connecting to the destination ahead of a ``migrate`` move (once; in the background): the channel
        is warm when the move starts instead of being set up while the source exports the state."""
        if self.mode == "migrate" and self._ready is None:
            self._ready = self.client()
            _connect_soon(self._ready)

    def take_client(self) -> EdgeClient:
        """The destination's client for the move: the prepared one, else a new one that starts connecting now."""
        client, self._ready = self._ready, None
        if client is None:
            client = self.client()
            _connect_soon(client)
        return client

    def release(self) -> None:
        """Close a client prepared for a move that did not happen (the round ended before it)."""
        client, self._ready = self._ready, None
        if client is not None:
            client.close()


class RestartRound(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a pass to restart the round on the destination (``mode="restart"``).

    Attributes
    ----------
    order : MoveOrder
        The move that restarts the round.
    """

    def __init__(self, order: MoveOrder) -> None:
        super().__init__(f"restart the round on {order.destination}")
        self.order = order


def migrate_session(session: SessionHandle, order: MoveOrder, model_spec: Any) -> SessionHandle:
    """Move ``session`` to ``order.destination`` and return the handle there.

    The device connects to the destination ahead of the move (:meth:`MoveOrder.prepare`, which the trainer calls a
    batch before a scheduled move), or else while the source moves the state, and continues with the session the
    source's reply describes (relayed from the destination's acknowledgement); it asks the destination (``Resume``)
    only when the source could not answer (it died after the destination's acknowledgement) or relayed nothing.

    Raises
    ------
    EdgeError
        When the session cannot be moved and is not on the destination (the caller falls back).
    """
    t0 = time.perf_counter()
    source = session.client
    resumed = False
    relayed = None
    dest = order.take_client()  # connected ahead by the trainer, else connecting while the source moves the state
    try:
        reply = source.migrate(session, order.destination, order.token, expect_model=model_spec)
        order.report["migration-bytes"] = float(reply.state_bytes)
        relayed = reply.resume
    except EdgeUnavailableError as exc:
        # The source may have died after the destination acknowledged: the session is then waiting there.
        log(WARNING, "migration: source edge server unreachable (%s); asking the destination", exc)
        resumed = True
    except BaseException:
        dest.close()
        raise
    try:
        if relayed is not None:
            handle = dest.resumed(relayed, order.token, session.split_point)
        else:
            handle = dest.resume(order.token, session.split_point)
    except SessionNotFoundError:
        dest.close()
        raise EdgeUnavailableError(
            "the source edge server failed before the destination received the session", address=source.address
        ) from None
    except BaseException:
        dest.close()
        raise
    handle.owns_client = True  # closed with the session
    if session.owns_client:  # a second move: the previous destination's channel is done
        session.owns_client = False
        source.close()
    order.report["migration-s"] = time.perf_counter() - t0
    order.report["migration-resumed"] = float(resumed)
    log(
        INFO,
        "migration: continuing on %s after batch %d (%.3f s)",
        order.destination,
        handle.last_batch,
        order.report["migration-s"],
    )
    return handle


def _connect_soon(client: EdgeClient) -> None:
    """Open ``client``'s channel on a thread of its own (see :func:`_connect`)."""
    threading.Thread(target=_connect, args=(client,), name="edgeflower-migration-connect", daemon=True).start()


def _connect(client: EdgeClient) -> None:
    """Open ``client``'s channel with a ``Health`` call (needs no token); a failure here is only a slower ``Resume``
    (which reports it)."""
    try:
        client.health(timeout_s=5.0)
    except Exception as exc:  # a warm-up only: Resume reports the real failure
        log(DEBUG, "migration: warming up the channel to %s failed: %s", client.address, exc)


def train_with_restart(
    run_pass: Callable[[Iterable[tuple[torch.Tensor, torch.Tensor]], Any, bool], Any],
    model: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    open_session: EdgeSessions,
) -> Any:
    """Run a round that may restart on another edge server (the restart baseline).

    Parameters
    ----------
    run_pass : callable
        ``(batches, open_session, moving) -> SplitResult``: one pass of the trainer; ``moving=False`` for the
        restarted pass (it moves no more).
    model : SplittableModel
        The trainer's model: its round-start weights are restored for the restart.
    batches : iterable of (x, y)
        The round's batches (those drawn before the restart are kept in memory and replayed).
    open_session : EdgeSessions
        Opens the round's session on the source; the restarted pass opens the same kind on the destination
        (DP parameters included).
    """
    source = iter(batches)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorded() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for item in source:  # a restart replays the round's batches: remember those drawn
            seen.append(item)
            yield item

    snapshot = copy.deepcopy(model.state_dict())
    t0 = time.perf_counter()
    try:
        return run_pass(recorded(), open_session, True)
    except RestartRound as signal:
        restart = signal.order
    wasted = time.perf_counter() - t0
    model.load_state_dict(snapshot)  # discard the round's progress, as the baseline does
    restart.report["restart-s"] = wasted  # its own key: a restart is not a migration (``migration-s``)
    restart.report["restart-batches"] = float(restart.at_batch)
    log(
        INFO,
        "migration: restart baseline: %d batches (%.3f s) discarded; the round restarts from batch 0 on %s",
        restart.at_batch,
        wasted,
        restart.destination,
    )
    dest = restart.client()
    try:
        result = run_pass(seen + list(source), open_session.on(dest, restart.token), False)
    finally:
        dest.close()
    result.seconds += wasted
    return result


class MoveTrigger:
    """An operator's or mobility controller's trigger for a running node (Deployment Engine).

    The node polls ``path`` between batches. ``edgeflower move --trigger PATH --to N [--mode restart]`` (or any
    program) writes ``{"to": N, "mode": "migrate"}`` there atomically; the node consumes the file and moves to edge
    server ``N`` of the round's plan, with the migration token the ServerApp issued for that edge server.

    Parameters
    ----------
    path : str
        The trigger file (``move-trigger`` in the node's node config).
    addresses, tokens : list of str
        The round's edge servers and a migration token for each (from the plan).
    current : int
        Index of the edge server the node trains with now.
    connect : callable, optional
        How the orders it fires connect to their destination (e.g. with TLS; default plaintext ``EdgeClient``).
    """

    def __init__(
        self,
        path: str,
        addresses: list[str],
        tokens: list[str],
        current: int,
        connect: Callable[[str], EdgeClient] | None = None,
    ) -> None:
        self.path = path
        self.connect = connect
        self.addresses = addresses
        self.tokens = tokens
        self.current = current
        self.fired: MoveOrder | None = None

    def poll(self, batch: int) -> MoveOrder | None:
        """A move order for ``batch`` if the trigger file appeared (it is consumed), else ``None``."""
        import json
        import os

        try:
            with open(self.path) as fh:
                request = json.load(fh)
            os.unlink(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log(WARNING, "move trigger %s is unreadable (%s); ignored", self.path, exc)
            return None
        try:
            to = int(request["to"])
            mode = str(request.get("mode", "migrate"))
            if not 0 <= to < len(self.addresses) or to == self.current:
                raise ValueError(f"edge index {to} is not another edge server of this round")
            order = MoveOrder(batch, self.addresses[to], self.tokens[to], mode, self.connect)
        except (KeyError, TypeError, ValueError) as exc:
            log(WARNING, "move trigger %s rejected: %s", self.path, exc)
            return None
        log(INFO, "move trigger: moving to edge server %d (%s) before batch %d", to, order.destination, batch)
        self.current = to
        self.fired = order
        return order


def write_trigger(path: str, to: int, mode: str = "migrate") -> None:
    """Fire a :class:`MoveTrigger` (atomically: write a temporary file, then rename it into place)."""
    import json
    import os

    if mode not in MOVE_MODES:
        raise ValueError(f"unknown move mode {mode!r}: expected one of {', '.join(MOVE_MODES)}")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"to": int(to), "mode": mode}, fh)
    os.replace(tmp, path)
