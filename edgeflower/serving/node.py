"""An inference node: holds one segment of a partitioned model (and optionally an exit head) and runs it.

Run it in-process::

    with InferenceNode("127.0.0.1", 0, secret=secret) as node:
        address = node.address

or as a process with ``edgeflower infer-node`` (prints ``inference node listening on HOST:PORT``). The controller
deploys a segment with a ``deploy`` frame (model spec or pruned-variant architecture as JSON, block range, weights
as codec tensors: nothing is unpickled), then sends ``forward`` frames. Every request's token is verified and must
be a controller's (role ``controller``, :data:`~edgeflower.transport.auth.RPC_ROLES`) and bound to this node's id:
``node_id`` when given (``--node-id``), else the address the node is bound to (``host:port``), which is the address
the controller dials on one machine. A node bound to a wildcard address (``--host 0.0.0.0``) must be given the id
the controller binds its tokens to (the address the controller dials, or its ``node_ids``), or it refuses them all.
A deployment's model size is checked before anything is built; non-finite weights and inputs are refused.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from logging import INFO, WARNING
from types import TracebackType

import grpc
import torch
from flwr.common.logger import log

from edgeflower.models.splittable import ModelSpec, Segment
from edgeflower.models.zoo import build_model
from edgeflower.serving.exits import ExitHead
from edgeflower.serving.protocol import MAX_PING_BYTES, NODE_SERVICE, check_request_id, field, verified
from edgeflower.serving.rpc import GrpcServer, ServerOptions, Unary
from edgeflower.transport.auth import TokenVerifier
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, encode_frame
from edgeflower.transport.emulation import DeviceProfile
from edgeflower.transport.errors import InvalidMessageError, SessionStateError
from edgeflower.transport.fields import all_finite
from edgeflower.transport.tls import TLSConfig

__all__ = ["Deployment", "InferenceNode", "build_segment", "check_deploy_size"]


@dataclass
class Deployment:
    """What a node currently serves."""

    version: str
    start: int
    stop: int
    segment: Segment
    exit_head: ExitHead | None


def _build_full(spec: ModelSpec, arch: dict | None) -> torch.nn.Module:
    if arch is not None:
        from edgeflower.pruning.arch import build_from_arch

        return build_from_arch(arch, from_peer=True)
    return build_model(spec, from_peer=True)  # a model reference only if this process trusts it


def check_deploy_size(spec: ModelSpec, arch: dict | None, max_params: int | None) -> int:
    """Count the described model's state on the meta device (nothing allocated); refuse it over ``max_params``.

    Raises
    ------
    InvalidMessageError
        If the model is over the limit or cannot be described.
    """
    if max_params is None:
        return 0
    try:
        with torch.device("meta"):
            full = _build_full(spec, arch)
        n = sum(t.numel() for t in full.state_dict().values())
    except (ValueError, RuntimeError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidMessageError(f"cannot build model {spec.name!r}: {exc}") from exc
    if n > max_params:
        raise InvalidMessageError(
            f"model {spec.name!r} has {n} parameters and buffers, more than this node's limit of {max_params}"
        )
    return n


def build_segment(spec: ModelSpec, arch: dict | None, start: int, stop: int, state: dict[str, torch.Tensor]) -> Segment:
    """Blocks ``[start, stop)`` of the described model with ``state`` loaded strictly (eval mode).

    Raises
    ------
    InvalidMessageError
        If the range is invalid or the weights do not fit.
    """
    try:
        full = _build_full(spec, arch)
        segment = full.segment(start, stop)
        segment.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InvalidMessageError(f"cannot build segment [{start}, {stop}) of {spec.name}: {exc}") from exc
    return segment.eval()


class InferenceNode:
    """A gRPC inference node.

    Parameters
    ----------
    host, port : str, int
        Address to bind (port 0 picks a free one).
    secret : bytes or str
        Token secret shared with the controller.
    node_id : str, optional
        This node's id; tokens naming another node are refused. Default: the bound address ``host:port`` (set by
        :meth:`start`).
    tls : TLSConfig, optional
        Serve over TLS.
    max_message_bytes : int
        Largest message.
    workers : int
        Worker threads of the data lane (deploys, forwards); heartbeats have their own.
    slowdown : float
        Emulated compute slow-down (a slower machine, or CPU load); :attr:`device` can be changed at run time.
    max_model_params : int, optional
        Largest model (parameters and buffers) a ``Deploy`` may describe, checked on the meta device before
        anything is built; default: what fits in one message (``max_message_bytes // 4``).
    max_deploy_bytes : int, optional
        Largest ``Deploy`` message; default ``4 * max_model_params`` plus 1 MiB (at most ``max_message_bytes``).
    insecure : bool
        Allow plaintext on a non-loopback address (with a WARNING); without it such an address needs ``tls``.
    options : ServerOptions, optional
        Deadlines (first message) and lanes.

    Only the controller's tokens (role ``controller``) are accepted, on every method: a serving client's token
    can neither deploy nor forward.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: bytes | str,
        node_id: str | None = None,
        tls: TLSConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        workers: int = 8,
        slowdown: float = 1.0,
        max_model_params: int | None = None,
        max_deploy_bytes: int | None = None,
        insecure: bool = False,
        options: ServerOptions | None = None,
    ) -> None:
        self.node_id = node_id
        self.device = DeviceProfile(slowdown)
        self.limits = Limits(max_message_bytes=max_message_bytes)
        self._verifier = TokenVerifier(secret, node_id)
        self._lock = threading.Lock()
        self.deployment: Deployment | None = None
        self.forwards = 0
        self.max_model_params = max_model_params or max_message_bytes // 4
        deploy_bytes = min(max_deploy_bytes or 4 * self.max_model_params + (1 << 20), max_message_bytes)
        self._server = GrpcServer(
            NODE_SERVICE,
            {
                "Deploy": Unary(self._deploy, max_request_bytes=deploy_bytes),
                "Forward": Unary(self._forward),
                "Ping": Unary(self._ping, control=True, max_request_bytes=MAX_PING_BYTES),
            },
            f"inference node {node_id or ''}".strip(),
            host,
            port,
            workers,
            max_message_bytes,
            tls,
            options,
            insecure,
            "controller tokens, model weights, inputs and activations",
        )

    @property
    def rpc_methods(self) -> frozenset[str]:
        """The RPCs this node serves (what a controller may call)."""
        return frozenset(self._server.methods)

    @property
    def address(self) -> str:
        """``host:port`` (after :meth:`start`)."""
        if not self._server.address:
            raise RuntimeError("the inference node is not started")
        return self._server.address

    def start(self) -> str:
        """Bind and serve; return the address."""
        address = self._server.start()
        self._verifier.edge_id = self.node_id or address  # controller tokens are bound to it
        if self.node_id is None and self._server.host in ("0.0.0.0", "::", "[::]", ""):
            log(
                WARNING,
                "inference node on %s has no --node-id: it accepts only controller tokens bound to %r; give it the "
                "address the controller dials as --node-id",
                address,
                address,
            )
        # no line of our own: the server logs "inference node serving on ADDRESS (TLS|plaintext)" and
        # `edgeflower infer-node` prints its ready line (one more said the same thing a third time)
        return address

    @property
    def identity(self) -> str | None:
        """The id controller tokens must be bound to (``node_id``, else the bound address; ``None`` before start)."""
        return self._verifier.edge_id

    def stop(self) -> None:
        """Stop serving. Idempotent."""
        self._server.stop()

    def __enter__(self) -> InferenceNode:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- RPCs ---------------------------------------------------------------------------------------------------------
    def _deploy(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        t0 = time.perf_counter()
        frame, _ = verified(request, self.limits, "deploy", self._verifier, "node/Deploy")
        version = field(frame, "version", str)
        start, stop = field(frame, "start", int), field(frame, "stop", int)
        try:
            spec = ModelSpec.from_dict(field(frame, "model", dict))
        except (ValueError, TypeError) as exc:
            raise InvalidMessageError(f"invalid model spec: {exc}") from exc
        arch = field(frame, "arch", (dict, type(None)), None)
        exit_shape = field(frame, "exit_in_shape", (list, type(None)), None)
        check_deploy_size(spec, arch, self.max_model_params)
        for name, tensor in frame.tensors.items():
            if not all_finite(tensor):
                raise InvalidMessageError(f"deployed tensor {name!r} contains NaN or Inf")
        state = {k: v for k, v in frame.tensors.items() if not k.startswith("exit.")}
        segment = build_segment(spec, arch, start, stop, state)
        head = None
        if exit_shape is not None:
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in exit_shape) or (
                len(exit_shape) > 8 or math.prod(exit_shape) > self.max_model_params
            ):
                raise InvalidMessageError(f"invalid exit_in_shape {exit_shape!r:.80}")
            try:
                head = ExitHead(exit_shape, spec.num_classes)
                head.load_state_dict({k[5:]: v for k, v in frame.tensors.items() if k.startswith("exit.")})
            except (ValueError, RuntimeError) as exc:
                raise InvalidMessageError(f"exit head does not fit: {exc}") from exc
            head.eval()
        with self._lock:
            self.deployment = Deployment(version, start, stop, segment, head)
        load_s = time.perf_counter() - t0
        log(INFO, "inference node %s: deployed blocks [%d, %d) version %s", self.node_id or "", start, stop, version)
        return encode_frame("deployed", {"version": version, "load_s": load_s})

    def _forward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        frame, _ = verified(request, self.limits, "forward", self._verifier, "node/Forward", ("x",))
        version = field(frame, "version", str)
        check_request_id(field(frame, "request_id", str))
        use_exit = field(frame, "exit", bool, False)
        dep = self.deployment
        if dep is None or dep.version != version:
            have = dep.version if dep else None
            raise SessionStateError(f"deployment version {version!r:.40} is not the one this node holds ({have!r})")
        if use_exit and dep.exit_head is None:
            raise SessionStateError("this node has no exit head")
        x = frame.tensors["x"]
        if not x.is_floating_point() or x.dim() < 2:
            raise InvalidMessageError(f"x must be a floating-point batch, got {x.dtype} {list(x.shape)}")
        if not all_finite(x):
            raise InvalidMessageError("x contains NaN or Inf")
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                y = dep.segment(x.float())
                if use_exit:
                    y = dep.exit_head(y)  # type: ignore[misc]
        except RuntimeError as exc:
            raise InvalidMessageError(f"x does not fit blocks [{dep.start}, {dep.stop}): {exc}") from exc
        compute_s = self.device.stretch(time.perf_counter() - t0)
        self.forwards += 1
        return encode_frame("forwarded", {"version": version, "compute_s": compute_s}, {"y": y}, self.limits)

    def _ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        verified(request, self.limits, "ping", self._verifier, "node/Ping")
        dep = self.deployment
        meta = {"node_id": self.identity or "", "version": dep.version if dep else None, "deployed": dep is not None}
        return encode_frame("pong", meta)
