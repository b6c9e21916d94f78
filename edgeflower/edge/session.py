"""One device's server-side training state on an edge server: the tail, its optimizer and its progress.

A :class:`TrainingSession` is created from an :class:`~edgeflower.transport.messages.OpenRequest` and then fed
:class:`~edgeflower.transport.messages.StepRequest` messages in order. For each micro-batch it runs the tail forward,
the cross-entropy loss (mean over the micro-batch, scaled by ``micro-batch size / batch size`` so that the gradients
accumulated over a batch's micro-batches equal the full batch's), the backward pass, and returns the gradient of
the loss with respect to the received activations. After the batch's last micro-batch it takes one optimizer step.
With one micro-batch per batch this is ordinary split training and matches local training of the whole model.
If the request carries :class:`~edgeflower.transport.messages.DPParams` (``dp = full``), the tail is trained with
DP-SGD: per-sample gradients accumulate over the batch's micro-batches and the step clips each sample and adds
noise (:class:`~edgeflower.privacy.server.PrivateTail`); the close metrics carry the session's accountant history.

The caller (the edge server) serialises access with :attr:`TrainingSession.lock`.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import threading
import time
from collections.abc import Iterator, Mapping

import torch

from edgeflower.edge.tail_pool import TAILS, TailPool
from edgeflower.models.splittable import ModelSpec
from edgeflower.models.zoo import build_model
from edgeflower.privacy.server import PrivateTail
from edgeflower.training import micro_batch_loss
from edgeflower.training import sgd as proximal_sgd
from edgeflower.transport.auth import TokenClaims
from edgeflower.transport.errors import EdgeAuthError, InvalidMessageError, SessionNotFoundError, SessionStateError
from edgeflower.transport.fields import all_finite
from edgeflower.transport.messages import OpenRequest, SessionMetrics, StepRequest, StepResult

__all__ = [
    "ACTIVATION_DTYPES",
    "EXPORT_AHEAD_WAIT_S",
    "LABEL_DTYPES",
    "TrainingSession",
    "check_finite",
    "check_model_size",
    "state_size",
]

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Dtypes accepted for activations (the gradient goes back in the same dtype)."""

LABEL_DTYPES = (torch.int64, torch.int32, torch.uint8)
"""Dtypes accepted for labels."""

EXPORT_AHEAD_WAIT_S = 30.0
"""Seconds a ``Migrate`` may wait beyond its own bound while the stream's end exports the session ahead of it."""


def state_size(spec: ModelSpec) -> int:
    """Elements in the state dict of ``spec``'s model, counted on the meta device (nothing is allocated).

    Raises
    ------
    InvalidMessageError
        If the model cannot be built.
    """
    try:
        with torch.device("meta"):
            model = build_model(spec, from_peer=True)
        return sum(t.numel() for t in model.state_dict().values())
    except (ValueError, TypeError, RuntimeError, KeyError, ArithmeticError) as exc:
        raise InvalidMessageError(f"cannot build model {spec.name!r}: {exc}") from exc


def check_model_size(spec: ModelSpec, max_params: int | None) -> int:
    """Refuse a model whose state (parameters and buffers) or one input sample is over ``max_params`` elements,
    before anything is allocated; return the state's size.

    Raises
    ------
    InvalidMessageError
        If the model is too large or cannot be built.
    """
    if max_params is None:
        return 0
    sample = math.prod(spec.in_shape)
    if sample > max_params:
        raise InvalidMessageError(f"input shape {list(spec.in_shape)} has more than {max_params} elements")
    n = state_size(spec)
    if n > max_params:
        raise InvalidMessageError(
            f"model {spec.name!r} has {n} parameters and buffers, more than this server's limit of {max_params}"
        )
    return n


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`InvalidMessageError` if a floating-point tensor holds NaN or Inf."""
    for name, tensor in tensors.items():
        if not all_finite(tensor):
            raise InvalidMessageError(f"{what} {name!r} contains NaN or Inf")


def _fresh_tail(spec: ModelSpec, k: int) -> tuple[torch.nn.Module, tuple[int, ...], bool]:
    """Blocks ``[k:]`` of a new ``spec`` model (weights still to load), the shape of one of their inputs and whether
    they were built now (not taken from the pool)."""
    pooled = TAILS.take(TailPool.key(spec, k))
    if pooled is not None:
        return (*pooled, False)
    try:
        model = build_model(spec, from_peer=True)  # a reference only if this process trusts it
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise InvalidMessageError(f"cannot build model {spec.name!r}: {exc}") from exc
    if not 0 <= k < model.num_blocks:
        raise InvalidMessageError(
            f"split point {k} leaves nothing to offload or is out of range: "
            f"{spec.name} accepts 0..{model.num_blocks - 1} on an edge server"
        )
    head, tail = model.split(k, share=True)
    if not any(p.requires_grad for p in tail.parameters()):
        raise InvalidMessageError(f"blocks [{k}:] of {spec.name} have no trainable parameters")
    return tail, _tail_input_shape(spec, k, head), True


def _tail_input_shape(spec: ModelSpec, k: int, head: torch.nn.Module) -> tuple[int, ...]:
    """The shape of one input of blocks ``[k:]``, from the head run on the meta device (nothing allocated, however
    large the activations a request's input shape implies); a model that cannot run there runs on zeros."""
    with torch.no_grad():
        try:
            with torch.device("meta"):
                return tuple(
                    build_model(spec, from_peer=True).split(k)[0].eval()(torch.empty(1, *spec.in_shape)).shape[1:]
                )
        except (NotImplementedError, RuntimeError, ValueError, TypeError):
            return tuple(head.eval()(torch.zeros(1, *spec.in_shape)).shape[1:])


def _build_tail(request: OpenRequest, max_params: int | None = None) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """Rebuild the model, cut it and load the tail's weights; return ``(tail, input_shape)``.

    With ``max_params`` the model's size is checked on the meta device first, so an oversized spec allocates
    nothing.
    """
    check_model_size(request.spec, max_params)
    check_finite(request.tail_state, "tail tensor")
    k = request.split_point
    tail, input_shape, fresh = _fresh_tail(request.spec, k)
    expected = tail.state_dict()
    missing = sorted(set(expected) - set(request.tail_state))
    unexpected = sorted(set(request.tail_state) - set(expected))
    if missing or unexpected:
        raise InvalidMessageError(
            f"tail state dict for split point {k} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, ref in expected.items():
        got = request.tail_state[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise InvalidMessageError(
                f"tail tensor {key!r} is {got.dtype}{list(got.shape)}, expected {ref.dtype}{list(ref.shape)}"
            )
    if fresh:  # a template once the state fits: a zoo spec always builds the same architecture
        TAILS.remember(TailPool.key(request.spec, k), tail, input_shape)
    tail.load_state_dict(request.tail_state, strict=True)
    tail.train()
    return tail, input_shape


class TrainingSession:
    """The tail of one device's model for one round, with its optimizer and progress.

    Parameters
    ----------
    session_id : str
        Unguessable id.
    claims : TokenClaims
        The verified claims of the token that opened the session.
    token : str
        That token; every later request must present it.
    request : OpenRequest
        What the device asked for.
    max_params : int, optional
        Largest model (parameters and buffers) this server builds; checked before anything is allocated.

    Raises
    ------
    InvalidMessageError
        If the model, split point or tail state is invalid.
    """

    def __init__(
        self, session_id: str, claims: TokenClaims, token: str, request: OpenRequest, max_params: int | None = None
    ) -> None:
        self.session_id = session_id
        self.claims = claims
        self._token = token.encode()
        self.spec = request.spec
        self.split_point = request.split_point
        self.wire_dtype: str | None = request.wire_dtype  # None: a migrated session, steps name their format
        self.tail, self.input_shape = _build_tail(request, max_params)
        self.num_classes = request.spec.num_classes
        opt = request.optimizer
        self.optimizer = proximal_sgd(  # FedProx: the tail's part of the proximal term (mu = 0: plain SGD)
            self.tail.parameters(), opt.lr, opt.momentum, opt.weight_decay, opt.proximal_mu
        )
        self.private: PrivateTail | None = None
        if request.dp is not None:
            try:
                self.private = PrivateTail(self.tail, self.optimizer, request.dp)
            except ValueError as exc:
                raise InvalidMessageError(f"cannot train the tail with DP-SGD: {exc}") from exc
            self.optimizer = self.private.optimizer
        self._pool_key = None if self.private is not None else TailPool.key(self.spec, self.split_point)
        self.lock = threading.Lock()
        self.metrics = SessionMetrics()
        self.opened_at = time.monotonic()
        self.last_active = self.opened_at
        self._detached = threading.Event()  # set while no training stream is attached
        self._detached.set()
        self.closed = False
        self._last_batch = -1
        self._batch: int | None = None
        self._num_micro = 0
        self._next_micro = 0
        self._batch_size = 0
        self._seen = 0
        self._export: bytes | None = None  # the state exported ahead of a move (any later step discards it)
        self._exporting = threading.Event()  # set while the stream's end exports the session ahead of a move
        self.moving = False  # a Migrate is handing the session over (set and cleared under the lock by Migrate)

    @property
    def attached(self) -> bool:
        """Whether a training stream is attached (set by the edge server when one starts and ends)."""
        return not self._detached.is_set()

    @attached.setter
    def attached(self, value: bool) -> None:
        if value:
            self._detached.clear()
        else:
            self._detached.set()

    def wait_detached(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the training stream to end, and up to :data:`EXPORT_AHEAD_WAIT_S` more while
        its end exports the session ahead of a move (:meth:`exporting_ahead`); whether none is attached now."""
        return self._detached.wait(timeout_s) or (self._exporting.is_set() and self._detached.wait(EXPORT_AHEAD_WAIT_S))

    @contextlib.contextmanager
    def exporting_ahead(self) -> Iterator[None]:
        """Mark the enclosed export ahead of a move (the stream ends after it: :meth:`wait_detached` waits longer)."""
        self._exporting.set()
        try:
            yield
        finally:
            self._exporting.clear()

    @property
    def expects_grad(self) -> bool:
        """Whether step results carry the activation gradient (the device has a head to train)."""
        return self.split_point > 0

    def owns(self, token: str) -> bool:
        """Whether ``token`` is the one that opened this session (constant-time comparison)."""
        return hmac.compare_digest(token.encode(), self._token)

    def check_owner(self, token: str, now: float) -> None:
        """Raise :class:`EdgeAuthError` unless ``token`` opened this session and is still valid at Unix time ``now``
        (:meth:`check_current`)."""
        if not self.owns(token):
            raise EdgeAuthError(f"the token does not own session {self.session_id}")
        self.check_current(now)

    def check_current(self, now: float) -> None:
        """Raise :class:`EdgeAuthError` if the token that opened (or imported) this session has expired at Unix time
        ``now``: a session serves its round and no call after it (the ServerApp issues tokens for the round's
        timeout, run-config ``round-timeout``)."""
        if now > self.claims.expires_at:
            raise EdgeAuthError(
                f"the token of session {self.session_id} expired {now - self.claims.expires_at:.1f} s ago: a session "
                "ends with its round (round-timeout)"
            )

    def touch(self) -> None:
        """Record activity (postpones the idle timeout)."""
        self.last_active = time.monotonic()

    # -- migration ----------------------------------------------------------------------------------------------------
    @property
    def batch_in_progress(self) -> bool:
        """Whether some micro-batches of a batch arrived and the batch's step is still to come."""
        return self._batch is not None

    @property
    def last_batch(self) -> int:
        """Index of the last completed batch (``-1`` before the first)."""
        return self._last_batch

    def resume_after(self, last_batch: int, metrics: SessionMetrics) -> None:
        """Continue a migrated session: the next batch must come after ``last_batch``; metrics carry on.

        The migrated state does not carry the wire format (it is float32 whatever the stream used): the resumed
        session answers each step in the format the step arrived in.
        """
        self._last_batch = last_batch
        self.wire_dtype = None
        self.metrics = metrics

    # -- one micro-batch --------------------------------------------------------------------------------------------
    def _validate(self, req: StepRequest) -> tuple[torch.Tensor, torch.Tensor]:
        act, labels = req.activations, req.labels
        if act.dtype not in ACTIVATION_DTYPES:
            raise InvalidMessageError(f"activations have dtype {act.dtype}, expected one of {ACTIVATION_DTYPES}")
        if act.dim() < 1 or tuple(act.shape[1:]) != self.input_shape or act.shape[0] < 1:
            raise InvalidMessageError(
                f"activations have shape {list(act.shape)}, expected [n >= 1, {', '.join(map(str, self.input_shape))}]"
                f" for split point {self.split_point}"
            )
        if labels.dtype not in LABEL_DTYPES or labels.dim() != 1 or labels.shape[0] != act.shape[0]:
            raise InvalidMessageError(
                f"labels must be a 1-d integer tensor of length {act.shape[0]}, got {labels.dtype}{list(labels.shape)}"
            )
        if not all_finite(act):
            raise InvalidMessageError("activations contain NaN or Inf")
        if self.wire_dtype is not None and req.wire != self.wire_dtype:
            raise InvalidMessageError(
                f"activations sent as {req.wire}, but the session was opened with wire dtype {self.wire_dtype}"
            )
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise InvalidMessageError(
                f"labels must be in [0, {self.num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return act, labels

    def _advance(self, req: StepRequest, n: int) -> bool:
        """Check the micro-batch's place in its batch; return whether it is the batch's last one."""
        if req.micro == 0:
            if self._batch is not None:
                raise SessionStateError(
                    f"batch {self._batch} is incomplete ({self._next_micro} of {self._num_micro} micro-batches) "
                    f"but batch {req.batch} started"
                )
            if req.batch <= self._last_batch:
                raise SessionStateError(f"batch index {req.batch} does not increase (last was {self._last_batch})")
            self._batch, self._num_micro, self._batch_size = req.batch, req.num_micro, req.batch_size
            self._next_micro, self._seen = 0, 0
            self.optimizer.zero_grad(set_to_none=True)
        elif self._batch is None:
            raise SessionStateError(
                f"micro-batch {req.micro}/{req.num_micro} of batch {req.batch} arrived first: a batch starts with "
                "micro-batch 0"
            )
        elif (req.batch, req.micro, req.num_micro, req.batch_size) != (
            self._batch,
            self._next_micro,
            self._num_micro,
            self._batch_size,
        ):
            raise SessionStateError(
                f"expected micro-batch {self._next_micro}/{self._num_micro} of batch {self._batch} "
                f"(batch_size {self._batch_size}), got {req.micro}/{req.num_micro} of batch {req.batch} "
                f"(batch_size {req.batch_size})"
            )
        last = req.micro == req.num_micro - 1
        total = self._seen + n
        if total > req.batch_size or (last and total != req.batch_size):
            raise InvalidMessageError(
                f"batch {req.batch} has {total} samples so far, but batch_size is {req.batch_size}"
            )
        return last

    def step(self, req: StepRequest) -> StepResult:
        """Process one micro-batch (call with :attr:`lock` held).

        Returns
        -------
        StepResult
            With ``server_s`` set to the time spent here (the caller may add decoding time).

        Raises
        ------
        SessionNotFoundError
            If the session was closed or reaped.
        InvalidMessageError, SessionStateError
            If the message does not fit the session.
        """
        t0 = time.perf_counter()
        if self.closed:
            raise SessionNotFoundError(f"session {self.session_id} was closed or expired")
        act, labels = self._validate(req)
        n = int(act.shape[0])
        last = self._advance(req, n)
        self._export = None  # a state exported ahead is out of date from here
        tc = time.perf_counter()
        x = act.to(torch.float32).requires_grad_(self.expects_grad)
        with torch.enable_grad():
            loss, scaled = micro_batch_loss(self.tail(x), labels, req.batch_size, req.num_micro)
            scaled.backward()
        grad = x.grad.to(act.dtype) if self.expects_grad and x.grad is not None else None
        if last:
            self.optimizer.step()
            self._last_batch, self._batch = req.batch, None
            self.metrics.batches += 1
        else:
            self._next_micro += 1
            self._seen += n
        compute_s = time.perf_counter() - tc
        loss_value = float(loss.detach())
        self.metrics.micro_batches += 1
        self.metrics.samples += n
        self.metrics.loss_sum += loss_value * n
        self.metrics.compute_s += compute_s
        self.touch()
        server_s = time.perf_counter() - t0
        return StepResult(req.batch, req.micro, loss_value, last, server_s, compute_s, grad, req.wire)

    # -- end ----------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """A detached copy of the tail's state dict (full-model keys)."""
        if self.closed:
            raise SessionNotFoundError(f"session {self.session_id} was closed or expired")
        return {key: value.detach().clone() for key, value in self.tail.state_dict().items()}

    def final_metrics(self) -> SessionMetrics:
        """The metrics with ``duration_s`` filled in."""
        self.metrics.duration_s = time.monotonic() - self.opened_at
        if self.private is not None:
            self.private.fill(self.metrics)
        return self.metrics

    def keep_export(self, state: bytes) -> None:
        """Keep ``state``, this session exported now, for a migration announced to follow, until the next step
        (call with :attr:`lock` held)."""
        self._export = state

    def take_export(self) -> bytes | None:
        """The state kept by :meth:`keep_export` if the session has not stepped since, else ``None`` (call with
        :attr:`lock` held; it is given once)."""
        state, self._export = self._export, None
        return state

    def release(self) -> None:
        """Drop the tail and the optimizer (call with :attr:`lock` held); later steps raise ``SessionNotFoundError``."""
        self.closed = True
        self._export = None
        if self.private is not None:
            self.private.release()
            self.private = None
        elif self.tail is not None:
            TAILS.give_back(self._pool_key, self.tail)  # the next session of this model loads its weights over it
        self.tail = None  # type: ignore[assignment]
        self.optimizer = None  # type: ignore[assignment]
