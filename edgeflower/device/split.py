"""Sequential split training on the device: head here, tail on an edge server, batch by batch.

For each batch the device runs the head forward, sends activations and labels up the offload channel, receives
the activation gradient and runs the head backward; the edge server runs the tail forward, loss, backward and its
optimizer step. At the end of the round the device fetches the trained tail, so the node can reply with the full
model. Every phase lands on a :class:`~edgeflower.timeline.Timeline`; device and link emulation stretch compute
and transfers to the emulated testbed.

If the edge server dies or becomes unreachable mid-round, the device keeps its head progress and finishes the
round by training the whole model locally, and reports that it fell back. The tail's progress on the dead edge
server is not lost either: the device keeps the activations and labels it sent this round (the *replay log*, up to
``replay_limit_mb``), so it rebuilds the tail the edge server had by replaying its updates from the round-start
weights (the same inputs, loss and SGD settings give the same tail, optimizer momentum included) and continues
from there: a round with a dead edge server ends with the same model as one without. Past the replay limit the log
is dropped and the tail restarts from the round-start weights (logged).

With ``dp`` (a :class:`~edgeflower.privacy.dpsgd.DeviceDP`) the head is trained with DP-SGD: Opacus' per-sample
gradient hooks on the head capture each sample's gradient from the activation gradient the edge server returns,
and the head's step clips each sample and adds noise. A DP round never falls back to non-private local training:
if the edge server fails, the round stops at that batch (the head keeps its private progress, the tail is the
round-start tail).

Which failures fall back: with ``fallback = "transient"`` (the default) an edge server that is unreachable, was
killed, did not answer in time or is overloaded (:func:`is_transient`) is a *transient* fault, and the device
finishes the round locally (a WARNING on the node, the reply's ``fallback`` record, the ServerApp's round summary).
Every other error is *permanent* (unknown model, spec mismatch, a message over a size limit, a bad token, a request
the edge server refuses): training locally would hide it, so the pass raises :class:`OffloadError` with the edge
server's message and the node's reply fails. With ``fallback = "never"`` a transient fault fails the node too.

A trainer gets everything about its round at construction: how to open the edge session (``open_session``, e.g.
an :class:`~edgeflower.device.sessions.EdgeSessions`), a scheduled move and an operator's trigger
(:mod:`edgeflower.device.mobility`) and a progress line; :meth:`SplitTrainer.train` then runs the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from logging import WARNING
from typing import TYPE_CHECKING, Any

import torch
from flwr.common.logger import log
from torch import nn

from edgeflower.device.mobility import MoveOrder, MoveTrigger, RestartRound, migrate_session, train_with_restart
from edgeflower.device.result import (
    FALLBACK_MODES,
    OffloadError,
    SplitResult,
    describe_failure,
    fallback_cause,
    is_transient,
)
from edgeflower.device.sessions import EdgeSessions, SessionOpener, tensor_bytes
from edgeflower.models.splittable import SplittableModel
from edgeflower.progress import BatchProgress
from edgeflower.timeline import Timeline
from edgeflower.training import make_optimizer, micro_batch_loss
from edgeflower.training import sgd as proximal_sgd
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink
from edgeflower.transport.errors import EdgeError
from edgeflower.transport.messages import OptimizerSettings
from edgeflower.transport.wire import WireForm, wire_nbytes

if TYPE_CHECKING:  # imports Opacus (seconds): only runs with DP load it
    from edgeflower.privacy.dpsgd import BatchDPOptimizer, DeviceDP

__all__ = [
    "FALLBACK_MODES",
    "OffloadError",
    "SessionOpener",
    "SplitResult",
    "SplitTrainer",
    "describe_failure",
    "fallback_cause",
    "is_transient",
]

Batch = tuple[torch.Tensor, torch.Tensor]
_Logged = tuple[Any, torch.Tensor]  # a replay log entry: (activations, or their WireForm; labels)


@dataclass
class _Pass:
    """The state of one pass over a round's batches."""

    timeline: Timeline
    t0: float
    round_start_tail: dict[str, torch.Tensor]
    head_opt: torch.optim.Optimizer | None
    moving: bool
    session: Any = None
    n: int = 0
    loss_sum: float = 0.0
    done: int = 0  # batches completed
    batch: int = 0  # index of the batch being trained (the last one drawn)
    pending: Batch | None = None  # the batch in progress (redone locally if the edge server fails during it)
    head_buffers: list[torch.Tensor] = field(default_factory=list)  # BatchNorm statistics before ``pending``
    fallback_cause: str = ""


class SplitTrainer:
    """Train a :class:`SplittableModel` split at ``split_point`` against an edge server.

    Parameters
    ----------
    model : SplittableModel
        The whole model; its head is trained in place and its tail replaced by the trained tail at the end.
    split_point : int
        Blocks on the device (``0 <= split_point < num_blocks``).
    optimizer : OptimizerSettings
        SGD settings, used for the head here and for the tail on the edge server.
    device : DeviceProfile, optional
        Compute emulation.
    link : EmulatedLink, optional
        Link emulation.
    dp : DeviceDP, optional
        Train the head with DP-SGD (see the module docstring).
    replay_limit_mb : float
        Most megabytes of sent activations and labels kept to replay the tail after a fallback (0 keeps none).
    fallback : str
        ``"transient"``: train locally after a transient edge failure; ``"never"``: raise :class:`OffloadError`.
        Permanent errors always raise it (see the module docstring).
    open_session : SessionOpener, optional
        Opens the round's edge session (an :class:`~edgeflower.device.sessions.EdgeSessions`, needed for a
        restart; any such callable otherwise). May be given to :meth:`train` instead.
    move_order : MoveOrder, optional
        A scheduled move to another edge server (:mod:`edgeflower.device.mobility`).
    move_trigger : MoveTrigger, optional
        An operator's trigger, polled between batches.
    progress : BatchProgress, optional
        Progress lines while the round runs (see :mod:`edgeflower.progress`).

    Attributes
    ----------
    last_move : MoveOrder or None
        The last move carried out by :meth:`train`.
    """

    def __init__(
        self,
        model: SplittableModel,
        split_point: int,
        optimizer: OptimizerSettings,
        device: DeviceProfile | None = None,
        link: EmulatedLink | None = None,
        dp: DeviceDP | None = None,
        replay_limit_mb: float = 256.0,
        fallback: str = "transient",
        *,
        open_session: SessionOpener | None = None,
        move_order: MoveOrder | None = None,
        move_trigger: MoveTrigger | None = None,
        progress: BatchProgress | None = None,
    ) -> None:
        model.check_split_point(split_point)
        if fallback not in FALLBACK_MODES:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACK_MODES)}, got {fallback!r}")
        self.fallback = fallback
        if split_point == model.num_blocks:
            raise ValueError("split point equals the number of blocks: nothing to offload, train locally")
        self.model = model
        self.k = split_point
        self.opt = optimizer
        self.device = device or DeviceProfile()
        self.link = link or EmulatedLink()
        self.head, self.tail = model.split(split_point, share=True)
        self.loss_fn = nn.CrossEntropyLoss()
        self.micro_batches = 1
        self.traffic: dict[str, int] = {"uplink-bytes": 0, "downlink-bytes": 0}
        self.dp = dp
        self.dp_optimizer: BatchDPOptimizer | None = None
        if replay_limit_mb < 0:
            raise ValueError(f"replay_limit_mb must be >= 0, got {replay_limit_mb}")
        self.replay_limit_bytes = int(replay_limit_mb * 1e6)
        self.open_session = open_session
        self.move_order = move_order
        self.move_trigger = move_trigger
        self.progress = progress
        self.last_move: MoveOrder | None = None
        self._replay: list[tuple[int, list[_Logged]]] | None = []
        self._sent: list[_Logged] = []
        self._end_after = -1  # the batch after which the stream ends (a migration follows)

    @property
    def _head_private(self) -> bool:
        return self.dp_optimizer is not None

    @property
    def may_restart(self) -> bool:
        """Whether a round may restart on another edge server (a restart order, or a trigger that may fire one)."""
        order = self.move_order
        return self.move_trigger is not None or (order is not None and order.mode == "restart")

    def _due_move(self, batch: int) -> MoveOrder | None:
        """The move to carry out before ``batch``: a scheduled one, or one an operator's trigger just fired."""
        if self.move_order is not None and self.move_order.due(batch):
            return self.move_order
        return self.move_trigger.poll(batch) if self.move_trigger is not None else None

    def _move(self, session: Any, order: MoveOrder) -> Any:
        """Carry out ``order`` at this batch boundary (see :mod:`edgeflower.device.mobility`)."""
        self.last_move = order
        if order.mode == "restart":
            session.abort()
            raise RestartRound(order)
        return migrate_session(session, order, self.model.spec)

    def _device(self, timeline: Timeline, batch: int, what: str, fn: Callable[[], Any], micro: int = 0) -> Any:
        start = time.perf_counter()
        out = fn()
        self.device.stretch(time.perf_counter() - start)
        timeline.add("device", start, time.perf_counter(), batch, micro, what=what)
        return out

    def train(self, batches: Iterable[Batch], open_session: SessionOpener | None = None) -> SplitResult:
        """Train one round over ``batches``, moving as ordered; see the module docstring for the protocol and the
        fallback.

        Parameters
        ----------
        batches : iterable of (x, y)
            The round's mini-batches (kept in memory when the round may restart).
        open_session : SessionOpener, optional
            Opens the edge session for this round (default: the one given at construction).
        """
        opener = open_session or self.open_session
        if opener is None:
            raise ValueError("no session opener: give open_session to the trainer or to train()")
        self.last_move = None
        if not self.may_restart:
            return self._pass(batches, opener, True)
        if not isinstance(opener, EdgeSessions):
            raise ValueError("a round that may restart needs an EdgeSessions opener (to reopen on the destination)")
        return train_with_restart(self._pass, self.model, batches, opener)

    def _pass(self, batches: Iterable[Batch], open_session: SessionOpener, moving: bool) -> SplitResult:
        """One pass over ``batches`` on the session ``open_session`` opens (``moving``: carry out due moves)."""
        t0 = time.perf_counter()
        self.model.train()
        self.traffic = {"uplink-bytes": 0, "downlink-bytes": 0}
        round_start_tail = {k: v.detach().clone() for k, v in self.tail.state_dict().items()}
        has_head = any(True for _ in self.head.parameters())
        head_opt = _sgd(self.head, self.opt) if has_head else None
        hooks = None
        if self.dp is not None and head_opt is not None:
            head_opt, hooks, _ = self.dp.wrap(self.head, head_opt)
            self.dp_optimizer = head_opt
        state = _Pass(Timeline(), t0, round_start_tail, head_opt, moving)
        try:
            return self._train(state, batches, open_session)
        finally:
            if hooks is not None:
                hooks.remove_hooks()
            if self.move_order is not None:
                self.move_order.release()  # connected ahead for a move the round did not reach

    def _train(self, state: _Pass, batches: Iterable[Batch], open_session: SessionOpener) -> SplitResult:
        self._replay = None if self.dp is not None else []  # a DP round never replays
        it = iter(batches)
        try:
            opened = self.link.clock.now()
            state.session = open_session(self.k, state.round_start_tail, self.opt)
            self.link.deliver(tensor_bytes(*state.round_start_tail.values()), True, opened)  # the tail goes up the link
            for b, (x, y) in enumerate(it):
                self._train_batch(state, b, x, y)
            return self._finish(state)
        except EdgeError as exc:
            return self._recover(state, exc, it)

    def _train_batch(self, state: _Pass, b: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One batch of the pass, after a move if one is due before it."""
        state.batch, state.pending = b, (x, y)
        _save_buffers(self.head, state.head_buffers)  # BatchNorm statistics: restored if this batch is redone
        order = self._due_move(b) if state.moving else None
        if order is not None:
            state.session = self._move(state.session, order)
        self._end_after = b if state.moving and self.move_order and self.move_order.migrates_after(b) else -1
        if state.head_opt is not None:
            state.head_opt.zero_grad(set_to_none=True)
        self._sent = []
        state.loss_sum += self._batch(state.session, b, x, y, state.timeline, state.head_opt)
        self._log_sent(len(y))
        state.pending = None
        state.n += len(y)
        state.done += 1
        if self.progress is not None:
            self.progress.update(state.done)

    def _finish(self, state: _Pass) -> SplitResult:
        """Close the session, take the trained tail."""
        closing = self.link.clock.now()
        tail_state, metrics = state.session.close()
        self.link.deliver(tensor_bytes(*tail_state.values()), False, closing)  # the trained tail comes down
        state.session = None
        self._replay = []  # the round is safe: free the log
        self.tail.load_state_dict(tail_state)
        return self._result(state, server_metrics=_metrics_dict(metrics))

    def _recover(self, state: _Pass, exc: EdgeError, rest: Iterator[Batch]) -> SplitResult:
        """The edge server failed: raise :class:`OffloadError` for a permanent fault, else finish the round here."""
        first = state.done  # batches complete in order: the first one not completed is redone locally
        if state.session is not None:
            try:
                state.session.abort()
            except Exception:  # the session is already broken; aborting it is best effort
                pass
        if not is_transient(exc) or self.fallback == "never":
            raise OffloadError(describe_failure(exc, self.fallback)) from exc
        log(WARNING, "edge server failed at batch %d (%s); finishing the round locally", first, exc)
        state.fallback_cause = fallback_cause(exc)
        self.tail.load_state_dict(state.round_start_tail)
        if state.pending is not None:
            with torch.no_grad():
                for buf, saved in zip(self.head.buffers(), state.head_buffers, strict=True):
                    buf.copy_(saved)
        reason = f"{type(exc).__name__}: {exc}"
        if self.dp is not None:
            log(WARNING, "dp: no non-private fallback; the round stops at batch %d", first)
            return self._result(state, fallback=(first, reason))
        tail_opt, replayed = self._replay_tail(state.timeline, state.batch)
        local = ([state.pending] if state.pending is not None else []) + list(rest)
        m, local_loss = self._train_locally(local, state.timeline, first, state.head_opt, tail_opt)
        state.n, state.loss_sum, state.done = state.n + m, state.loss_sum + local_loss, state.done + len(local)
        return self._result(state, fallback=(first, reason), replayed=replayed)

    def _result(
        self,
        state: _Pass,
        server_metrics: dict[str, float] | None = None,
        fallback: tuple[int, str] | None = None,
        replayed: int = 0,
    ) -> SplitResult:
        first, reason = fallback if fallback else (-1, "")
        return SplitResult(
            state.n,
            state.loss_sum / max(state.n, 1),
            time.perf_counter() - state.t0,
            fallback is not None,
            first,
            reason,
            state.timeline,
            server_metrics or {},
            {**self.traffic, "batches": state.done, "micro-batches": self.micro_batches},
            replayed,
            state.fallback_cause if fallback is not None else "",
        )

    def _batch(
        self,
        session: Any,
        b: int,
        x: torch.Tensor,
        y: torch.Tensor,
        timeline: Timeline,
        head_opt: torch.optim.Optimizer | None,
    ) -> float:
        """One batch, sequentially: head forward, uplink, server, downlink, head backward. Returns the loss sum and
        appends what it sent to ``self._sent`` (for the replay log)."""
        act = self._device(timeline, b, "fwd", lambda: self.head(x)) if self.k > 0 else x
        sent = act.detach()
        wire = _wire(session)
        form = self._as_sent(sent, wire)
        self._sent.append((form, y))
        up0, up1 = self._transmit(wire_nbytes(sent, wire) + tensor_bytes(y), True)
        timeline.add("uplink", up0, up1, b)
        clock = self.link.clock
        call0 = clock.now()
        result = session.step(form, y, batch=b, batch_size=len(y))
        server_s = min(result.server_s, clock.now() - call0)
        timeline.add("server", call0, call0 + server_s, b)
        # the gradient leaves the edge server when it is done in the model; the step's real transport time (both
        # ways, over loopback) counts towards the downlink's modelled time, not on top of it (EmulatedLink.deliver)
        down0, down1 = self._deliver(wire_nbytes(result.grad, wire), False, call0 + server_s)
        timeline.add("downlink", down0, down1, b)
        if b == self._end_after:  # a migration follows: the source ends the stream while the head trains
            session.end_stream(then_migrate=True)  # it exports the session meanwhile
        if head_opt is not None:
            self._device(timeline, b, "bwd", lambda: (act.backward(result.grad), head_opt.step()))
        return result.loss * len(y)

    @staticmethod
    def _as_sent(sent: torch.Tensor, wire: str) -> torch.Tensor | WireForm:
        """``sent`` as it goes up, encoded once: the tensor (``float32``), else its wire form. The session sends
        it as it is, and the replay log keeps it (half or a quarter of the memory: the uplink byte count),
        decoded at replay into what the edge server trained on."""
        return sent if wire == "float32" else WireForm.of(sent, wire)

    def _transmit(self, nbytes: int, up: bool) -> tuple[float, float]:
        self.traffic["uplink-bytes" if up else "downlink-bytes"] += nbytes
        return self.link.transmit(nbytes, up)

    def _deliver(self, nbytes: int, up: bool, ready: float) -> tuple[float, float]:
        """Charge a transfer already made for real, booked from ``ready`` (see ``EmulatedLink.deliver``)."""
        self.traffic["uplink-bytes" if up else "downlink-bytes"] += nbytes
        return self.link.deliver(nbytes, up, ready)

    def _book(self, nbytes: int, up: bool, ready: float | None = None) -> tuple[float, float]:
        """Book a transfer on the emulated link without waiting: ``(start, arrival)`` (see ``EmulatedLink.book``)."""
        self.traffic["uplink-bytes" if up else "downlink-bytes"] += nbytes  # one thread per direction
        return self.link.book(nbytes, up, ready)

    def _log_sent(self, batch_size: int) -> None:
        """Keep the batch the edge server just trained on in the replay log (dropped past the limit). The log holds
        exactly what went up the link this round, so its size is the uplink byte count."""
        if self._replay is None:
            return
        if self.traffic["uplink-bytes"] > self.replay_limit_bytes:
            log(
                WARNING,
                "split: replay log over %.0f MB; a fallback this round restarts the tail from the round start",
                self.replay_limit_bytes / 1e6,
            )
            self._replay = None
            return
        self._replay.append((batch_size, self._sent))

    def _replay_tail(self, timeline: Timeline, batch: int) -> tuple[torch.optim.Optimizer, int]:
        """Rebuild the dead edge server's tail from the round-start tail and the replay log.

        Each logged batch repeats the edge server's step: :func:`~edgeflower.training.micro_batch_loss` per
        micro-batch, backward, one SGD step. Returns the tail optimizer (its momentum as the edge server had it) and
        the number of batches replayed.
        """
        tail_opt = _sgd(self.tail, self.opt)
        log_ = self._replay or []
        self._replay, self._sent = [], []

        def replay() -> None:
            for batch_size, micro in log_:
                tail_opt.zero_grad(set_to_none=True)
                for act, labels in micro:
                    logits = self.tail((act.decode() if isinstance(act, WireForm) else act).to(torch.float32))
                    micro_batch_loss(logits, labels.long(), batch_size, len(micro))[1].backward()
                tail_opt.step()

        if log_:
            self._device(timeline, batch, "replay", replay)
        return tail_opt, len(log_)

    def _train_locally(
        self,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        timeline: Timeline,
        first: int,
        head_opt: torch.optim.Optimizer | None,
        tail_opt: torch.optim.Optimizer,
    ) -> tuple[int, float]:
        """Fallback: train the whole model here (both sides keep their optimizer state); returns (samples, loss sum)."""
        n, total = 0, 0.0
        for i, (x, y) in enumerate(batches):

            def step(x: torch.Tensor = x, y: torch.Tensor = y) -> float:
                for opt in (head_opt, tail_opt):
                    if opt is not None:
                        opt.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.tail(self.head(x)), y)
                loss.backward()
                for opt in (head_opt, tail_opt):
                    if opt is not None:
                        opt.step()
                return loss.item()

            total += self._device(timeline, first + i, "local", step) * len(y)
            n += len(y)
            if self.progress is not None:
                self.progress.update(first + i + 1, "training locally after the edge server failed")
        return n, total


def _sgd(module: nn.Module, settings: OptimizerSettings) -> torch.optim.Optimizer:
    """The SGD optimizer of one side, built from the session's optimizer settings (FedProx's term included)."""
    mu = getattr(settings, "proximal_mu", 0.0)
    if mu:
        return proximal_sgd(module.parameters(), settings.lr, settings.momentum, settings.weight_decay, mu)
    return make_optimizer(module.parameters(), settings.lr, settings.momentum, settings.weight_decay)


def _wire(session: Any) -> str:
    """The session's wire format (:mod:`~edgeflower.transport.wire`; ``float32`` for a stand-in without one)."""
    return getattr(session, "wire_dtype", "float32")


def _save_buffers(module: nn.Module, saved: list[torch.Tensor]) -> None:
    """Copy ``module``'s buffers into ``saved`` (allocated on the first call of a pass, reused after)."""
    with torch.no_grad():
        if not saved:
            saved.extend(buf.detach().clone() for buf in module.buffers())
        else:
            for dst, buf in zip(saved, module.buffers(), strict=True):
                dst.copy_(buf)


def _metrics_dict(metrics: Any) -> dict[str, float]:
    fields = ("batches", "micro_batches", "samples", "loss_sum", "compute_s", "server_s", "duration_s")
    fields += ("dp_steps", "dp_noise_multiplier", "dp_sample_rate", "dp_epsilon")
    return {f.replace("_", "-"): float(getattr(metrics, f)) for f in fields if hasattr(metrics, f)}
