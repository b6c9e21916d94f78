"""The gRPC service definition of the offload channel (no ``.proto``: generic handlers over raw frames).

Service ``edgeflower.Offload``; every request and response is one codec frame (raw bytes, see
:mod:`edgeflower.transport.codec`); serialisation is the identity so that decoding and its errors stay under our
control.

===========  ================  =========================  ==========================================
method       kind              request                    response
===========  ================  =========================  ==========================================
``Open``     unary-unary       ``open``                   ``opened``
``Train``    stream-stream     ``step`` ...               ``step_result`` ... (one per step, in order)
``Close``    unary-unary       ``close``                  ``closed``
``Health``   unary-unary       ``health``                 ``health_info``
``Migrate``  unary-unary       ``migrate``                ``migrated`` (see :mod:`.migration`)
``Import``   unary-unary       ``import``                 ``imported`` (edge server to edge server)
``Resume``   unary-unary       ``resume``                 ``resumed``
===========  ================  =========================  ==========================================

``Train`` carries the session id and token as gRPC metadata (:data:`SESSION_KEY`, :data:`TOKEN_KEY`); they are
checked once when the stream starts, and the stream is bound to that session.
"""

from __future__ import annotations

from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "METHOD_CLOSE",
    "METHOD_HEALTH",
    "METHOD_IMPORT",
    "METHOD_MIGRATE",
    "METHOD_OPEN",
    "METHOD_RESUME",
    "METHOD_TRAIN",
    "SERVICE",
    "SESSION_KEY",
    "TOKEN_KEY",
    "channel_options",
    "identity",
]

SERVICE = "edgeflower.Offload"
"""Fully qualified service name."""

METHOD_OPEN = f"/{SERVICE}/Open"
METHOD_TRAIN = f"/{SERVICE}/Train"
METHOD_CLOSE = f"/{SERVICE}/Close"
METHOD_HEALTH = f"/{SERVICE}/Health"
METHOD_MIGRATE = f"/{SERVICE}/Migrate"
METHOD_IMPORT = f"/{SERVICE}/Import"
METHOD_RESUME = f"/{SERVICE}/Resume"

SESSION_KEY = "x-edgeflower-session"
"""gRPC metadata key of the session id on ``Train``."""

TOKEN_KEY = "x-edgeflower-token"
"""gRPC metadata key of the session token on ``Train``."""

_GRPC_OVERHEAD = 64 * 1024


def identity(data: bytes) -> bytes:
    """The (de)serializer of every method: frames are handled as raw bytes."""
    return data


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, server: bool = False) -> list[tuple[str, int]]:
    """gRPC options shared by the server and the client.

    The receive limit is exactly ``max_message_bytes`` (gRPC rejects bigger messages with ``RESOURCE_EXHAUSTED``);
    keepalive pings let both ends notice a dead peer within about half a minute.
    """
    options = [
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.max_send_message_length", int(max_message_bytes) + _GRPC_OVERHEAD),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if server:
        options += [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.so_reuseport", 0),
        ]
    else:
        options += [("grpc.enable_retries", 0)]
    return options
