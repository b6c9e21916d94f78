"""The controller's gRPC service: ``Predict`` (clients' requests) and ``Status`` (route, nodes, events).

Every call presents a token of a role the RPC accepts (:data:`~edgeflower.transport.auth.RPC_ROLES`); a predict
request's input is checked (float32, the model's input shape, ``1 .. max_batch`` samples, finite) before it reaches
the exactly-once handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import torch

from edgeflower.serving.protocol import CONTROLLER_SERVICE, MAX_CONTROL_BYTES, check_request_id, field, verified
from edgeflower.serving.rpc import GrpcServer, ServerOptions, Unary
from edgeflower.serving.settings import ControllerConfig
from edgeflower.transport.auth import TokenVerifier
from edgeflower.transport.codec import Limits, encode_frame
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import all_finite
from edgeflower.transport.tls import TLSConfig

__all__ = ["PredictService", "check_input"]


def check_input(x: torch.Tensor, in_shape: Sequence[int], max_batch: int) -> None:
    """Refuse an input that is not a float32 batch of ``1 .. max_batch`` finite samples of ``in_shape``.

    Raises
    ------
    InvalidMessageError
        Naming what is wrong.
    """
    shape = tuple(in_shape)
    if x.dtype != torch.float32 or tuple(x.shape[1:]) != shape or not 0 < len(x) <= max_batch:
        raise InvalidMessageError(
            f"x must be float32 of shape [1..{max_batch}, {', '.join(map(str, shape))}], got {x.dtype} {list(x.shape)}"
        )
    if not all_finite(x):
        raise InvalidMessageError("x contains NaN or Inf")


def max_predict_bytes(in_shape: Sequence[int], max_batch: int) -> int:
    """Largest ``predict`` request: ``max_batch`` float32 samples of ``in_shape`` and 64 KiB of header."""
    return MAX_CONTROL_BYTES + max_batch * math.prod(in_shape) * 4


class PredictService:
    """The controller's gRPC server.

    Parameters
    ----------
    handle : callable
        ``handle(request_id, x) -> prediction frame`` (exactly once).
    status : callable
        ``status() -> dict`` for the ``Status`` RPC.
    verifier : TokenVerifier
        Checks the tokens of callers.
    in_shape : sequence of int
        Per-sample input shape of the model.
    host, port : str, int
        Address to bind (port 0 picks a free one).
    config : ControllerConfig
        ``max_batch``, ``workers``, ``max_message_bytes``, ``first_message_s`` and ``insecure``.
    tls : TLSConfig, optional
        Serve over TLS.

    Attributes
    ----------
    server : GrpcServer
        The gRPC server (its ``methods`` are the RPCs served).
    """

    def __init__(
        self,
        handle: Callable[[str, torch.Tensor], bytes],
        status: Callable[[], dict[str, Any]],
        verifier: TokenVerifier,
        in_shape: Sequence[int],
        host: str,
        port: int,
        config: ControllerConfig,
        tls: TLSConfig | None = None,
    ) -> None:
        self.handle = handle
        self.status = status
        self.verifier = verifier
        self.in_shape = tuple(in_shape)
        self.max_batch = config.max_batch
        self.limits = Limits(max_message_bytes=config.max_message_bytes)
        self.server = GrpcServer(
            CONTROLLER_SERVICE,
            {
                "Predict": Unary(self._predict, max_request_bytes=max_predict_bytes(self.in_shape, self.max_batch)),
                "Status": Unary(self._status, control=True, max_request_bytes=MAX_CONTROL_BYTES),
            },
            "controller",
            host,
            port,
            config.workers,
            config.max_message_bytes,
            tls,
            ServerOptions(first_message_s=config.first_message_s),
            config.insecure,
            "client tokens, inputs and predictions",
        )

    @property
    def address(self) -> str:
        """``host:port`` once started, else ``""``."""
        return self.server.address

    def start(self) -> str:
        """Bind and serve (the server logs ``controller serving on ADDRESS``); return the address."""
        return self.server.start()

    def stop(self) -> None:
        """Stop serving. Idempotent."""
        self.server.stop()

    def _predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        frame, claims = verified(request, self.limits, "predict", self.verifier, "controller/Predict", ("x",))
        request_id = check_request_id(field(frame, "request_id", str))
        x = frame.tensors["x"]
        check_input(x, self.in_shape, self.max_batch)
        return self.handle(request_id, x, claims.node_id)

    def _status(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        _, claims = verified(request, self.limits, "status", self.verifier, "controller/Status")
        return encode_frame("status_info", self.status(claims.node_id))
