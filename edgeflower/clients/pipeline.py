"""Pipeline-parallel split training (PiPar): micro-batches overlap device compute, uplink, server and downlink.

Each batch of ``B`` samples is cut into ``m`` micro-batches. The device runs the ``m`` head forward passes back to
back, booking each activation's transfer on the emulated uplink, and a sender thread hands it to the edge server
when it has arrived (transfers queue for the wire, their latencies overlap); the edge server processes
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
from typing import TYPE_CHECKING, Any

import torch

from edgeflower.clients.split import SplitTrainer, _nbytes
from edgeflower.models.splittable import SplittableModel
from edgeflower.timeline import Timeline
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, wait_until
from edgeflower.transport.errors import EdgeError, SessionStateError
from edgeflower.transport.messages import OptimizerSettings, StepResult

if TYPE_CHECKING:  # imports Opacus (seconds): only runs with DP load it
    from edgeflower.privacy.dpsgd import DeviceDP

__all__ = ["PipelineTrainer"]

_STOP = object()


class PipelineTrainer(SplitTrainer):
    """Split training with ``micro_batches`` micro-batches per batch in flight at once.

    Parameters
    ----------
    model, split_point, optimizer, device, link
        As for :class:`~edgeflower.clients.split.SplitTrainer`.
    micro_batches : int
        Micro-batches per batch (capped by the batch size); 1 is sequential split training.
    dp : DeviceDP, optional
        Train the head with DP-SGD (see the module docstring).
    replay_limit_mb : float
        As for :class:`~edgeflower.clients.split.SplitTrainer` (the replay log keeps every micro-batch).
    fallback : str
        As for :class:`~edgeflower.clients.split.SplitTrainer`: which edge failures fall back to local training.
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
    ) -> None:
        super().__init__(model, split_point, optimizer, device, link, dp, replay_limit_mb, fallback)
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.micro_batches = micro_batches

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
        batch_size = len(y)
        outbox: queue.Queue[Any] = queue.Queue()
        results: list[StepResult | None] = [None] * m
        arrivals = [0.0] * m  # when each gradient has come down the emulated link
        handed = [0.0] * m  # when each activation was handed to the edge server (its modelled arrival there)
        clock = self.link.clock
        arrived = [threading.Event() for _ in range(m)]
        errors: list[BaseException] = []
        sent = threading.Semaphore(0)  # the receiver may only wait for micro-batches already sent

        def fail(exc: BaseException) -> None:
            errors.append(exc)
            for event in arrived:
                event.set()
            sent.release(m)

        def sender() -> None:
            try:
                for j in range(m):
                    item = outbox.get()
                    if item is _STOP:
                        return
                    act, labels, arrival = item
                    wait_until(arrival, clock)  # booked by the device thread: latencies of successive sends overlap
                    handed[j] = clock.now()
                    session.send(act, labels, batch=b, micro=j, num_micro=m, batch_size=batch_size)
                    sent.release()
            except BaseException as exc:  # handed to the device thread, which raises it
                fail(exc)

        def receiver() -> None:
            done = 0.0  # when the edge server finished the previous micro-batch, in the model
            try:
                for j in range(m):
                    sent.acquire()
                    if errors:
                        return
                    result = session.recv()
                    server_s = min(result.server_s, clock.now() - handed[j])
                    # the edge server takes micro-batches in order, each once it has arrived; its gradient leaves
                    # then, so the real transport time (over loopback) counts towards the downlink's modelled time
                    done = max(handed[j], done) + server_s
                    timeline.add("server", done - server_s, done, b, j)
                    down0, down1 = self._book(_nbytes(result.grad), False, done)  # waited for by the device
                    timeline.add("downlink", down0, down1, b, j)
                    results[j] = result
                    arrivals[j] = down1
                    arrived[j].set()
            except BaseException as exc:
                fail(exc)

        threads = [
            threading.Thread(target=sender, name=f"edgeflower-pipe-send-{b}", daemon=True),
            threading.Thread(target=receiver, name=f"edgeflower-pipe-recv-{b}", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            acts = []
            recompute = self._head_private
            for j in range(m):
                if errors:
                    break
                if self.k == 0:
                    act = xs[j]
                elif recompute:
                    act = self._device(timeline, b, "fwd", lambda j=j: _no_grad(self.head, xs[j]), j)
                else:
                    act = self._device(timeline, b, "fwd", lambda j=j: self.head(xs[j]), j)
                acts.append(act)
                sent_act = act.detach()
                self._sent.append((sent_act, ys[j]))
                up0, up1 = self._book(_nbytes(sent_act, ys[j]), True)
                timeline.add("uplink", up0, up1, b, j)
                outbox.put((sent_act, ys[j], up1))
            loss = 0.0
            for j in range(m):
                arrived[j].wait()
                if errors:
                    break
                wait_until(arrivals[j], clock)
                result = results[j]
                assert result is not None
                loss += result.loss * len(ys[j])
                if head_opt is not None:
                    self._device(
                        timeline,
                        b,
                        "bwd",
                        lambda j=j, a=acts[j], g=result.grad: (self.head(xs[j]) if recompute else a).backward(g),
                        j,
                    )
            if errors:
                raise _as_edge_error(errors[0])
            if head_opt is not None:
                self._device(timeline, b, "step", head_opt.step)
            return loss
        finally:
            if errors:
                session.abort()  # unblocks the receiver
                sent.release(m)
            outbox.put(_STOP)
            for t in threads:
                t.join(timeout=30)


def _no_grad(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _as_edge_error(exc: BaseException) -> EdgeError:
    if isinstance(exc, EdgeError):
        return exc
    return SessionStateError(f"pipeline thread failed: {exc!r}")
