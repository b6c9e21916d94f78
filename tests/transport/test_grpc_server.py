"""The gRPC server every edgeflower service shares: a taken port is a readable error, stop joins threads, and calls
waiting for a worker hold at most a byte budget."""

from __future__ import annotations

import threading

import grpc
import pytest

from edgeflower.edge.server import EdgeServer
from edgeflower.serving.node import InferenceNode
from edgeflower.transport.grpc_server import ServerOptions, Unary, format_address, open_channel, start_server
from tests._edge_helpers import wait_until

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


class _HeldServer:
    """A server whose one method takes its only worker until :attr:`release` is set (``started`` once it has)."""

    def __init__(self, options: ServerOptions, control: bool) -> None:
        self.release, self.started = threading.Event(), threading.Event()
        handlers = {"Work": Unary(self._work, control=control)}
        self.running = start_server("edgeflower.test.Held", handlers, "127.0.0.1", 0, 1 << 20, None, "held", options)
        self.channel = open_channel(self.running.address, 1 << 20)
        self.call = self.channel.unary_unary("/edgeflower.test.Held/Work")

    def _work(self, raw: bytes, context: object) -> bytes:
        self.started.set()
        self.release.wait(60)
        return b"done %d" % len(raw)

    def close(self) -> None:
        self.release.set()
        self.channel.close()
        self.running.stop(0)


def test_control_calls_wait_for_their_worker_as_long_as_it_takes_and_count_but_are_never_refused():
    """A refused heartbeat would fail over a node that is only busy: control calls count their bytes, never refused."""
    held = _HeldServer(ServerOptions(control_workers=1, admission_wait_s=0.0, max_waiting_bytes=1000), control=True)
    running, call = held.running, held.call
    try:
        holding = call.future(b"a" * 10, timeout=60)
        assert held.started.wait(30)
        waiting = [call.future(b"b" * 600, timeout=60) for _ in range(2)]  # no admission wait: they wait on
        assert wait_until(lambda: running.waiting_bytes == 1200, timeout_s=30)  # over the budget, still waiting
        held.release.set()
        assert holding.result() == b"done 10" and [w.result() for w in waiting] == [b"done 600"] * 2
        assert running.waiting_bytes == 0 and running.refused == dict.fromkeys(running.refused, 0)
    finally:
        held.close()


def test_calls_waiting_for_a_worker_hold_at_most_the_byte_budget_and_the_next_one_is_refused_at_once():
    """(A single call waiting alone may be over the budget: a budget under the message limit never locks one out.)"""
    # One worker, an admission wait far longer than the calls' deadlines: a call that waited would end with
    # DEADLINE_EXCEEDED, so RESOURCE_EXHAUSTED proves the refusal came without waiting.
    held = _HeldServer(ServerOptions(data_workers=1, admission_wait_s=120.0, max_waiting_bytes=1000), control=False)
    running, call, release, started = held.running, held.call, held.release, held.started
    try:
        holding = call.future(b"a" * 10, timeout=60)  # takes the only worker
        assert started.wait(30)
        waiting = call.future(b"b" * 600, timeout=60)  # waits, holding 600 bytes
        assert wait_until(lambda: running.waiting_bytes == 600, timeout_s=30)
        with pytest.raises(grpc.RpcError) as refused:
            call(b"c" * 600, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "hold 600 of at most 1000 bytes (this one has 600)" in refused.value.details()
        assert running.refused["waiting_bytes"] == 1
        release.set()
        assert holding.result() == b"done 10" and waiting.result() == b"done 600"  # nothing waiting was lost
        assert running.waiting_bytes == 0
        assert call(b"d" * 2000, timeout=30) == b"done 2000"  # a free worker: no wait, the budget does not apply
        release.clear()
        started.clear()
        holding = call.future(b"e" * 10, timeout=60)
        assert started.wait(30)
        alone = call.future(b"f" * 2000, timeout=60)  # over the budget, but nothing else waits: it may wait
        assert wait_until(lambda: running.waiting_bytes == 2000, timeout_s=30)
        release.set()
        assert holding.result() == b"done 10" and alone.result() == b"done 2000"
        assert running.refused["waiting_bytes"] == 1
    finally:
        held.close()
