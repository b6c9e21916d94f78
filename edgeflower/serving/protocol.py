"""The serving protocol: two gRPC services over codec frames (no ``.proto``, no pickle).

Service ``edgeflower.Inference`` (one per inference node) and ``edgeflower.Serving`` (the controller):

==========================  ==============  =====================================================  ====================
method                      frame kind      meta                                                   tensors
==========================  ==============  =====================================================  ====================
Inference/Deploy            ``deploy``      token, version, start, stop, model (ModelSpec dict),   the segment's state
                                            arch (pruned variant's description or null),           dict; ``exit.*``:
                                            exit_in_shape (or null)                                the exit head
  reply                     ``deployed``    version, load_s                                        --
Inference/Forward           ``forward``     token, version, request_id, exit (bool)                x
  reply                     ``forwarded``   version, compute_s                                     y
Inference/Ping              ``ping``        token                                                  --
  reply                     ``pong``        node_id, version, deployed                             --
Serving/Predict             ``predict``     token, request_id                                      x
  reply                     ``prediction``  request_id, technique, route_version, replayed,         logits
                                            recovered
Serving/Status              ``status``      token                                                  --
  reply                     ``status_info`` technique, route, alive, pending, events               --
==========================  ==============  =====================================================  ====================

Every request carries an HMAC token (:mod:`edgeflower.transport.auth`, the offload channel's scheme); a node
answers a ``forward`` only for the deployment ``version`` it holds, so a request routed on a stale plan fails with
``FAILED_PRECONDITION`` and the controller retries it on the current route.
"""

from __future__ import annotations

import re
from typing import Any

from edgeflower.transport.auth import RPC_ROLES, TokenClaims, TokenVerifier
from edgeflower.transport.codec import Frame, Limits, decode_frame, decode_header
from edgeflower.transport.errors import InvalidMessageError

__all__ = [
    "CONTROLLER_SERVICE",
    "MAX_CONTROL_BYTES",
    "MAX_PING_BYTES",
    "NODE_SERVICE",
    "REQUEST_ID_RE",
    "check_request_id",
    "expect",
    "field",
    "verified",
]

NODE_SERVICE = "edgeflower.Inference"
CONTROLLER_SERVICE = "edgeflower.Serving"

DEPLOY = f"/{NODE_SERVICE}/Deploy"
FORWARD = f"/{NODE_SERVICE}/Forward"
PING = f"/{NODE_SERVICE}/Ping"
PREDICT = f"/{CONTROLLER_SERVICE}/Predict"
STATUS = f"/{CONTROLLER_SERVICE}/Status"

MAX_CONTROL_BYTES = 64 * 1024
"""Largest ``status`` request (a token and nothing else), refused on its raw size before anything is decoded."""
MAX_PING_BYTES = 256 * 1024
"""Largest ``ping`` request: a token and at most a bandwidth probe's padding (``probe_bytes``)."""

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
"""Request ids are 1-128 characters of ``[A-Za-z0-9_.:-]``."""

_MISSING = object()


def expect(frame: Frame, kind: str, tensors: tuple[str, ...] = ()) -> Frame:
    """Return ``frame`` if it is of ``kind`` and holds the ``tensors``; else raise :class:`InvalidMessageError`."""
    if frame.kind != kind:
        raise InvalidMessageError(f"expected a {kind!r} message, got {frame.kind!r:.50}")
    for name in tensors:
        if name not in frame.tensors:
            raise InvalidMessageError(f"{kind!r} message lacks tensor {name!r}")
    return frame


def field(frame: Frame, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """Metadata field ``name`` of ``frame`` checked against ``kind`` (bools are never ints)."""
    value = frame.meta.get(name, default)
    if value is _MISSING:
        raise InvalidMessageError(f"{frame.kind!r} message lacks field {name!r}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is default and default is not _MISSING:
        return value
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidMessageError(f"field {name!r} of {frame.kind!r} must be {kind}, got a bool")
    if not isinstance(value, kinds):
        raise InvalidMessageError(f"field {name!r} of {frame.kind!r} has type {type(value).__name__}")
    return value


def check_request_id(value: Any) -> str:
    """Return ``value`` if it is a valid request id, else raise :class:`InvalidMessageError`."""
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise InvalidMessageError(f"invalid request id {value!r:.60}: 1-128 characters of [A-Za-z0-9_.:-]")
    return value


def verified(
    request: bytes, limits: Limits, kind: str, verifier: TokenVerifier, rpc: str, tensors: tuple[str, ...] = ()
) -> tuple[Frame, TokenClaims]:
    """The request's frame and its token's claims, the token checked from the header alone first: the tensors of a
    request without a valid token for ``rpc`` (a key of :data:`~edgeflower.transport.auth.RPC_ROLES`) are never
    read or copied.

    Raises
    ------
    EdgeAuthError
        A missing, forged, expired or foreign token, or one of a role ``rpc`` does not accept.
    InvalidMessageError, MessageTooLargeError
        A malformed frame, one of another kind, or one without the ``tensors``.
    """
    header = expect(decode_header(request, limits), kind)
    claims = verifier.verify(field(header, "token", str), roles=RPC_ROLES[rpc])
    return expect(decode_frame(request, limits), kind, tensors), claims
