"""The offload channel: a gRPC service carrying activations up and gradients down between devices and edge servers.

* :mod:`~edgeflower.transport.codec` -- the binary frame format (dtype whitelist, shapes, raw bytes; no pickle);
* :mod:`~edgeflower.transport.messages` -- the typed messages (open, step, close, health) on top of frames;
* :mod:`~edgeflower.transport.service` -- the gRPC method names and channel options;
* :mod:`~edgeflower.transport.auth` -- HMAC-SHA256 session tokens (:class:`TokenIssuer`, :class:`TokenVerifier`);
* :mod:`~edgeflower.transport.tls` -- optional TLS (:class:`TLSConfig`);
* :mod:`~edgeflower.transport.client` -- the device side (:class:`EdgeClient`, :class:`SessionHandle`);
* :mod:`~edgeflower.transport.errors` -- the exceptions and their gRPC status codes.

The server side lives in :mod:`edgeflower.server`.
"""

from edgeflower.transport.auth import TokenClaims, TokenIssuer, TokenVerifier, load_secret
from edgeflower.transport.client import EdgeClient, SessionHandle
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
