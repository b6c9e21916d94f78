"""The gRPC server start-up every edgeflower service shares: a taken port is a readable error, stop joins threads."""

from __future__ import annotations

import threading

import pytest

from edgeflower.edge.server import EdgeServer
from edgeflower.serving.node import InferenceNode
from edgeflower.transport.grpc_server import format_address

SECRET = b"grpc-server-test-secret-0123456789abcdef"


def test_addresses_are_formatted_with_bracketed_ipv6_hosts():
    assert format_address("127.0.0.1", 5) == "127.0.0.1:5"
    assert format_address("::1", 5) == "[::1]:5"
    assert format_address("[::1]", 5) == "[::1]:5"


@pytest.mark.parametrize("second", [EdgeServer, InferenceNode], ids=["edge-server", "inference-node"])
def test_a_taken_port_is_a_readable_oserror_and_leaves_no_thread_behind(second):
    before = {t.name for t in threading.enumerate()}
    with EdgeServer(secret=SECRET) as first:
        port = int(first.address.rsplit(":", 1)[1])
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            second("127.0.0.1", port, secret=SECRET).start()
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {name for name in leftover if name.startswith("edgeflower-")}, leftover
