"""Exceptions of the offload channel and their gRPC status codes.

Every failure the edge server reports travels as a gRPC status code plus a readable detail string. The server
raises one of the classes below and aborts the RPC with the class's :attr:`EdgeError.code`; the client turns the
status back into the same class with :func:`from_rpc_error`. Callers catch :class:`EdgeUnavailableError` to fall back
(train locally) and treat everything else as a bug or an attack.

=========================  ======================  =========================================================
class                      gRPC status             meaning
=========================  ======================  =========================================================
EdgeUnavailableError       UNAVAILABLE, CANCELLED  the edge server is down, unreachable or went away
EdgeTimeoutError           DEADLINE_EXCEEDED       no reply in time (a subclass of EdgeUnavailableError)
EdgeAuthError              UNAUTHENTICATED,        bad, expired or foreign token; session of another node
                           PERMISSION_DENIED
SessionNotFoundError       NOT_FOUND               unknown, closed or reaped session
InvalidMessageError        INVALID_ARGUMENT        malformed frame, wrong shape or dtype, bad field
MessageTooLargeError       RESOURCE_EXHAUSTED      a message over the size limit (an InvalidMessageError)
EdgeOverloadedError        RESOURCE_EXHAUSTED      too many sessions or concurrent RPCs
SessionStateError          FAILED_PRECONDITION     out-of-order micro-batch, second stream, pending results
EdgeServerError            INTERNAL, UNKNOWN, ...  an unexpected failure inside the edge server
=========================  ======================  =========================================================
"""

from __future__ import annotations

import grpc

__all__ = [
    "EdgeAuthError",
    "EdgeError",
    "EdgeOverloadedError",
    "EdgeServerError",
    "EdgeTimeoutError",
    "EdgeUnavailableError",
    "InvalidMessageError",
    "MessageTooLargeError",
    "SessionNotFoundError",
    "SessionStateError",
    "from_rpc_error",
]


class EdgeError(Exception):
    """Base class of every offload-channel error.

    Parameters
    ----------
    detail : str
        Readable description.
    code : grpc.StatusCode, optional
        The status code (defaults to the class's :attr:`code`).
    address : str, optional
        The edge server's address, when known (client side).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, detail: str, *, code: grpc.StatusCode | None = None, address: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.detail = detail
        self.address = address
        where = f"edge server {address}: " if address else ""
        super().__init__(f"{where}{self.code.name}: {detail}")


class EdgeUnavailableError(EdgeError):
    """The edge server cannot be reached or went away (process killed, network down): fall back."""

    code = grpc.StatusCode.UNAVAILABLE


class EdgeTimeoutError(EdgeUnavailableError):
    """The edge server did not answer within the timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EdgeAuthError(EdgeError):
    """The token is missing, forged, expired, for another edge server, or does not own the session."""

    code = grpc.StatusCode.PERMISSION_DENIED


class SessionNotFoundError(EdgeError):
    """No such session on this edge server (never opened, closed, or reaped after a timeout/disconnect)."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidMessageError(EdgeError, ValueError):
    """A message is malformed or does not match the session (bytes, dtype, shape, field values)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class MessageTooLargeError(InvalidMessageError):
    """A message exceeds the configured size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class EdgeOverloadedError(EdgeError):
    """The edge server refuses more sessions or concurrent RPCs."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class SessionStateError(EdgeError):
    """A request is valid in itself but not in the session's current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class EdgeServerError(EdgeError):
    """An unexpected failure inside the edge server."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[EdgeError]] = {
    grpc.StatusCode.UNAVAILABLE: EdgeUnavailableError,
    grpc.StatusCode.CANCELLED: EdgeUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: EdgeTimeoutError,
    grpc.StatusCode.UNAUTHENTICATED: EdgeAuthError,
    grpc.StatusCode.PERMISSION_DENIED: EdgeAuthError,
    grpc.StatusCode.NOT_FOUND: SessionNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidMessageError,
    grpc.StatusCode.FAILED_PRECONDITION: SessionStateError,
}


def from_rpc_error(error: grpc.RpcError, address: str | None = None) -> EdgeError:
    """Translate a failed gRPC call into the matching :class:`EdgeError` subclass.

    ``RESOURCE_EXHAUSTED`` becomes :class:`MessageTooLargeError` when the detail talks about a message size (gRPC's own
    limit check or the codec's), else :class:`EdgeOverloadedError`.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    detail = (details_fn() if callable(details_fn) else None) or str(error) or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        too_large = "larger than" in detail or "too large" in detail or "message size" in detail
        cls: type[EdgeError] = MessageTooLargeError if too_large else EdgeOverloadedError
    else:
        cls = _BY_CODE.get(code, EdgeServerError)
    return cls(detail, code=code, address=address)
