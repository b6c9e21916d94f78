"""The offload channel: a gRPC service carrying activations up and gradients down between devices and edge servers.

* :mod:`~edgeflower.transport.codec` -- the binary frame format (dtype whitelist, shapes, raw bytes; no pickle);
* :mod:`~edgeflower.transport.messages` -- the typed messages' catalogue and import point, on top of frames:
  :mod:`~edgeflower.transport.fields` (checked field readers), :mod:`~edgeflower.transport.settings` (optimizer
  and DP settings), :mod:`~edgeflower.transport.session_messages` (open, close),
  :mod:`~edgeflower.transport.step_messages` (the training stream), :mod:`~edgeflower.transport.health`;
  :mod:`~edgeflower.transport.migration` (session migration, FedFly);
* :mod:`~edgeflower.transport.limits` -- message size limits sized from the model a run trains;
* :mod:`~edgeflower.transport.service` -- the gRPC method names and channel options;
* :mod:`~edgeflower.transport.grpc_server` -- the asyncio gRPC server every service runs on, and client channels;
* :mod:`~edgeflower.transport.auth` -- HMAC-SHA256 session tokens (:class:`TokenIssuer`, :class:`TokenVerifier`);
* :mod:`~edgeflower.transport.tls` -- optional TLS (:class:`TLSConfig`);
* :mod:`~edgeflower.transport.client` -- the device side: :class:`EdgeClient`, one connection to an edge server
  (``open_session(..., dp=...)``, migrate, resume);
* :mod:`~edgeflower.transport.handle` -- :class:`SessionHandle`, one open session (steps in order, close, detach);
* :mod:`~edgeflower.transport.stream` -- a session's bidirectional training stream (queues and reader thread);
* :mod:`~edgeflower.transport.emulation` -- emulated slow devices and links;
* :mod:`~edgeflower.transport.errors` -- the exceptions and their gRPC status codes.

The server side lives in :mod:`edgeflower.edge`.
"""

from edgeflower.transport.auth import TokenClaims, TokenIssuer, TokenVerifier, load_secret
from edgeflower.transport.client import EdgeClient
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, DTYPES, Frame, Limits, decode_frame, encode_frame
from edgeflower.transport.errors import (
    EdgeAuthError,
    EdgeError,
    EdgeOverloadedError,
    EdgeServerError,
    EdgeTimeoutError,
    EdgeUnavailableError,
    InvalidMessageError,
    MessageTooLargeError,
    SessionNotFoundError,
    SessionStateError,
)
from edgeflower.transport.handle import SessionHandle
from edgeflower.transport.messages import HealthInfo, OptimizerSettings, SessionMetrics, StepResult
from edgeflower.transport.tls import TLSConfig

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DTYPES",
    "EdgeAuthError",
    "EdgeClient",
    "EdgeError",
    "EdgeOverloadedError",
    "EdgeServerError",
    "EdgeTimeoutError",
    "EdgeUnavailableError",
    "Frame",
    "HealthInfo",
    "InvalidMessageError",
    "Limits",
    "MessageTooLargeError",
    "OptimizerSettings",
    "SessionHandle",
    "SessionMetrics",
    "SessionNotFoundError",
    "SessionStateError",
    "StepResult",
    "TLSConfig",
    "TokenClaims",
    "TokenIssuer",
    "TokenVerifier",
    "decode_frame",
    "encode_frame",
    "load_secret",
]
