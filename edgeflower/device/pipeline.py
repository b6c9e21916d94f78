"""Pipeline-parallel split training (PiPar): micro-batches overlap device compute, uplink, server and downlink.

Each batch of ``B`` samples is cut into ``m`` micro-batches. The device runs the ``m`` head forward passes back to
back, booking each activation's transfer on the emulated uplink, and a sender thread (one per pass) hands it to the
edge server when it has arrived (transfers queue for the wire, their latencies overlap); the edge server processes
micro-batches as they arrive (loss scaled by ``n_j / B`` so the accumulated gradients equal the full batch's) and
streams the gradients back; a receiver thread takes them off the stream and books the emulated downlink; the device
runs each micro-batch's backward once its gradient has arrived. Both sides accumulate gradients and take one
optimizer step per batch, so the update equals the sequential one.

BatchNorm: statistics are computed per micro-batch (as PiPar does), so with BatchNorm models the pipelined update
equals local training with gradient accumulation over the same micro-batches, not the full-batch update; with
GroupNorm (or no normalisation) it equals sequential split training exactly (up to float rounding).

With DP (``dp``): Opacus' per-sample gradient hooks pair each backward pass with the *latest* forward pass of a
module, so back-to-back forward passes would mis-pair micro-batches. In a DP round the pipelined head forward runs
without autograd, and each micro-batch's backward recomputes its head forward (one extra head forward per
micro-batch); the per-sample gradients of all micro-batches are then clipped per sample, over the whole batch, in
one noisy step (:class:`~edgeflower.privacy.dpsgd.BatchDPOptimizer`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from edgeflower.device.mobility import MoveOrder, MoveTrigger
from edgeflower.device.result import SplitResult
from edgeflower.device.sessions import SessionOpener, tensor_bytes
from edgeflower.device.split import Batch, SplitTrainer
from edgeflower.models.splittable import SplittableModel
from edgeflower.progress import BatchProgress
from edgeflower.timeline import Timeline
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, wait_until
from edgeflower.transport.errors import EdgeError, SessionStateError
from edgeflower.transport.messages import OptimizerSettings, StepResult
from edgeflower.transport.wire import WireForm, wire_nbytes

if TYPE_CHECKING:  # imports Opacus (seconds): only runs with DP load it
    from edgeflower.privacy.dpsgd import DeviceDP

__all__ = ["PipelineTrainer"]

_STOP = object()

Booker = Callable[[int, bool, float | None], tuple[float, float]]
"""``book(nbytes, up, ready) -> (start, arrival)`` on the emulated link (counting the traffic)."""


class PipelineTrainer(SplitTrainer):
    """Split training with ``micro_batches`` micro-batches per batch in flight at once.

    Parameters
    ----------
    model, split_point, optimizer, device, link
        As for :class:`~edgeflower.device.split.SplitTrainer`.
    micro_batches : int
        Micro-batches per batch (capped by the batch size); 1 is sequential split training.
    dp : DeviceDP, optional
        Train the head with DP-SGD (see the module docstring).
    replay_limit_mb : float
        As for :class:`~edgeflower.device.split.SplitTrainer` (the replay log keeps every micro-batch).
    fallback : str
        As for :class:`~edgeflower.device.split.SplitTrainer`: which edge failures fall back to local training.
    open_session, move_order, move_trigger, progress
        As for :class:`~edgeflower.device.split.SplitTrainer`: the round's session opener, moves and progress.
    """

    def __init__(
        self,
        model: SplittableModel,
        split_point: int,
        optimizer: OptimizerSettings,
        micro_batches: int,
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
        super().__init__(
            model,
            split_point,
            optimizer,
            device,
            link,
            dp,
            replay_limit_mb,
            fallback,
            open_session=open_session,
            move_order=move_order,
            move_trigger=move_trigger,
            progress=progress,
        )
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.micro_batches = micro_batches
        self._workers: _Workers | None = None  # the pass's sender and receiver threads

    def _batch(
        self,
        session: Any,
        b: int,
        x: torch.Tensor,
        y: torch.Tensor,
        timeline: Timeline,
        head_opt: torch.optim.Optimizer | None,
    ) -> float:
        m = min(self.micro_batches, len(y))
        if m == 1:
            return super()._batch(session, b, x, y, timeline, head_opt)
        xs, ys = x.tensor_split(m), y.tensor_split(m)
        if self._workers is None:
            self._workers = _Workers()
        pipe = _Pipe(session, b, m, len(y), timeline, self.link, self._book, self._workers, b == self._end_after)
        try:
            acts = self._forward(pipe, xs, ys)
            loss = self._backward(pipe, xs, ys, acts, head_opt is not None)
            if pipe.errors:
                raise _as_edge_error(pipe.errors[0])
            if head_opt is not None:
                self._device(timeline, b, "step", head_opt.step)
            return loss
        except BaseException as exc:
            if not pipe.errors:  # abandoned by the device thread: the workers skip what is left of it
                pipe.fail(exc)
            raise
        finally:
            pipe.finish()

    def _pass(self, batches: Iterable[Batch], open_session: SessionOpener, moving: bool) -> SplitResult:
        """One pass (see :class:`~edgeflower.device.split.SplitTrainer`); its pipeline threads end with it."""
        try:
            return super()._pass(batches, open_session, moving)
        finally:
            if self._workers is not None:
                self._workers.stop()
                self._workers = None

    def _forward(self, pipe: _Pipe, xs: tuple[torch.Tensor, ...], ys: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The head forward of every micro-batch, back to back; each activation is booked on the uplink and queued
        for the sender. In a DP round the forward runs without autograd (recomputed in :meth:`_backward`)."""
        acts = []
        b, timeline = pipe.batch, pipe.timeline
        for j in range(pipe.m):
            if pipe.errors:
                break
            if self.k == 0:
                act = xs[j]
            elif self._head_private:
                act = self._device(timeline, b, "fwd", lambda j=j: _no_grad(self.head, xs[j]), j)
            else:
                act = self._device(timeline, b, "fwd", lambda j=j: self.head(xs[j]), j)
            acts.append(act)
            sent_act = act.detach()
            form = self._as_sent(sent_act, pipe.wire)
            self._sent.append((form, ys[j]))
            up0, up1 = self._book(wire_nbytes(sent_act, pipe.wire) + tensor_bytes(ys[j]), True)
            timeline.add("uplink", up0, up1, b, j)
            pipe.put(j, form, ys[j], up1)
        return acts

    def _backward(
        self,
        pipe: _Pipe,
        xs: tuple[torch.Tensor, ...],
        ys: tuple[torch.Tensor, ...],
        acts: list[torch.Tensor],
        has_head_opt: bool,
    ) -> float:
        """Each micro-batch's head backward once its gradient has come down the link; returns the loss sum."""
        loss = 0.0
        recompute = self._head_private
        for j in range(pipe.m):
            result = pipe.result(j)
            if result is None:
                break
            loss += result.loss * len(ys[j])
            if has_head_opt:
                self._device(
                    pipe.timeline,
                    pipe.batch,
                    "bwd",
                    lambda j=j, a=acts[j], g=result.grad: (self.head(xs[j]) if recompute else a).backward(g),
                    j,
                )
        return loss


class _Workers:
    """A pass's sender and receiver threads, shared by the pipes of its batches (started by the first pipelined
    batch, stopped at the end of the pass): the sender hands booked activations to the edge server when they have
    arrived; the receiver takes the results off the stream, in the order they were sent, and books their
    downlink. A failure lands on its batch's pipe; the items of a failed pipe still queued are skipped."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[Any] = queue.Queue()  # (pipe, j, activations, labels, arrival) or _STOP
        self.sent: queue.Queue[Any] = queue.Queue()  # (pipe, j) whose result is awaited, or _STOP
        self.threads = [
            threading.Thread(target=self._send, name="edgeflower-pipe-send", daemon=True),
            threading.Thread(target=self._receive, name="edgeflower-pipe-recv", daemon=True),
        ]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """End both threads once what is queued is done (the sender passes the stop on), and join them."""
        self.outbox.put(_STOP)
        for t in self.threads:
            t.join(timeout=30)

    def _send(self) -> None:
        while (item := self.outbox.get()) is not _STOP:
            pipe, j, act, labels, arrival = item
            if pipe.errors:
                continue
            try:
                wait_until(arrival, pipe.clock)  # booked by the device thread: latencies of successive sends overlap
                pipe.handed[j] = pipe.clock.now()
                pipe.session.send(act, labels, batch=pipe.batch, micro=j, num_micro=pipe.m, batch_size=pipe.batch_size)
            except BaseException as exc:  # handed to the device thread, which raises it
                pipe.fail(exc)
                continue
            self.sent.put((pipe, j))
        self.sent.put(_STOP)

    def _receive(self) -> None:
        while (item := self.sent.get()) is not _STOP:
            pipe, j = item
            if pipe.errors:
                continue
            try:
                pipe.receive(j)
            except BaseException as exc:
                pipe.fail(exc)


class _Pipe:
    """One batch's micro-batches in flight (on the pass's :class:`_Workers`)."""

    def __init__(
        self,
        session: Any,
        batch: int,
        m: int,
        batch_size: int,
        timeline: Timeline,
        link: EmulatedLink,
        book: Booker,
        workers: _Workers,
        end_after: bool = False,
    ) -> None:
        self.session, self.batch, self.m, self.batch_size = session, batch, m, batch_size
        self.end_after = end_after  # a migration follows: end the stream once the last result is in
        self.wire: str = getattr(session, "wire_dtype", "float32")  # a test's stand-in session may have none
        self.timeline, self.clock, self.book, self.workers = timeline, link.clock, book, workers
        self.results: list[StepResult | None] = [None] * m
        self.arrivals = [0.0] * m  # when each gradient has come down the emulated link
        self.handed = [0.0] * m  # when each activation was handed to the edge server (its modelled arrival there)
        self.arrived = [threading.Event() for _ in range(m)]
        self.errors: list[BaseException] = []
        self.done = 0.0  # when the edge server finished the previous micro-batch, in the model

    def put(self, j: int, act: torch.Tensor | WireForm, labels: torch.Tensor, arrival: float) -> None:
        """Queue micro-batch ``j`` for the sender, to be handed over at ``arrival``."""
        self.workers.outbox.put((self, j, act, labels, arrival))

    def finish(self) -> None:
        """After a failure, abort the session (unblocks the receiver; the pipe's queued items are skipped)."""
        if self.errors:
            self.session.abort()

    def result(self, j: int) -> StepResult | None:
        """Micro-batch ``j``'s result once its gradient has arrived on the emulated link (``None`` after a failure)."""
        self.arrived[j].wait()
        if self.errors:
            return None
        wait_until(self.arrivals[j], self.clock)
        result = self.results[j]
        assert result is not None
        return result

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        for event in self.arrived:
            event.set()

    def receive(self, j: int) -> None:
        """Take micro-batch ``j``'s result off the stream and book its downlink (in the receiver thread)."""
        result = self.session.recv()
        server_s = min(result.server_s, self.clock.now() - self.handed[j])
        # the edge server takes micro-batches in order, each once it has arrived; its gradient leaves then,
        # so the real transport time (over loopback) counts towards the downlink's modelled time
        self.done = max(self.handed[j], self.done) + server_s
        self.timeline.add("server", self.done - server_s, self.done, self.batch, j)
        down0, down1 = self.book(wire_nbytes(result.grad, self.wire), False, self.done)  # the device waits for it
        self.timeline.add("downlink", down0, down1, self.batch, j)
        self.results[j] = result
        self.arrivals[j] = down1
        if self.end_after and j == self.m - 1:  # once the last gradient is in, as in split training: the source
            wait_until(down1, self.clock)  # exports while the head finishes the batch
            self.session.end_stream(then_migrate=True)
        self.arrived[j].set()


def _no_grad(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _as_edge_error(exc: BaseException) -> EdgeError:
    if isinstance(exc, EdgeError):
        return exc
    return SessionStateError(f"pipeline thread failed: {exc!r}")
