"""Bad input is rejected with a clear status and exception, and the edge server keeps serving other sessions."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator

import grpc
import pytest
import torch

from edgeflower.edge import EdgeServer, EdgeServerConfig
from edgeflower.transport import (
    EdgeAuthError,
    EdgeClient,
    EdgeOverloadedError,
    EdgeUnavailableError,
    InvalidMessageError,
    MessageTooLargeError,
    SessionNotFoundError,
    SessionStateError,
    TokenIssuer,
)
from edgeflower.transport.client import SessionHandle
from edgeflower.transport.messages import OpenReply, StepRequest
from edgeflower.transport.service import METHOD_OPEN
from tests._edge_helpers import ISSUER, OPTIM, SECRET, fashion_batches, fresh_model, token, wait_until

LIMIT = 3 * 1024 * 1024  # the vgg5 tail is about 1.8 MB
K = 2  # vgg5 after conv1 + pool1: activations (n, 32, 14, 14)


@pytest.fixture(scope="module")
def server() -> Iterator[EdgeServer]:
    config = EdgeServerConfig(max_message_bytes=LIMIT, max_sessions=16)
    with EdgeServer("127.0.0.1", 0, secret=SECRET, edge_id="edge-a", config=config) as srv:
        yield srv


@pytest.fixture
def client(server: EdgeServer) -> Iterator[EdgeClient]:
    with EdgeClient(server.address, max_message_bytes=8 * LIMIT, timeout_s=20) as c:
        yield c
    assert wait_until(lambda: server.num_sessions == 0), "a session leaked"


@pytest.fixture(scope="module")
def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return fashion_batches(num_batches=1, batch_size=8)


def _open(client: EdgeClient, node: int = 1, k: int = K, **kw: object) -> tuple[SessionHandle, torch.nn.Module]:
    model = fresh_model("vgg5")
    head, tail = model.split(k)
    return client.open_session(token(node, **kw), model.spec, k, tail.state_dict(), OPTIM), head


class GoodSession(threading.Thread):
    """A well-behaved device training on the same server while a test misbehaves: it trains half its batches,
    holds its session open until the test is done misbehaving (``resume``), then trains the rest and closes."""

    def __init__(self, address: str, data: list, batches: int = 12) -> None:
        super().__init__(daemon=True)
        self.address, self.data, self.batches = address, data, batches
        self.started_training = threading.Event()
        self.resume = threading.Event()
        self.error: BaseException | None = None
        self.metrics = None

    def run(self) -> None:
        try:
            with EdgeClient(self.address, timeout_s=20) as client:
                session, head = _open(client, node=99)
                x, y = self.data[0]
                for b in range(self.batches):
                    if b == self.batches // 2:
                        self.started_training.set()
                        assert self.resume.wait(120), "the test never let the good session resume"
                    result = session.step(head(x).detach(), y, batch=b)
                    assert result.grad is not None and result.stepped
                _, self.metrics = session.close()
        except BaseException as exc:
            self.error = exc
            self.started_training.set()

    def check(self) -> None:
        self.join(30)
        assert not self.is_alive()
        assert self.error is None, repr(self.error)
        assert self.metrics is not None and self.metrics.batches == self.batches


@pytest.fixture
def good(server: EdgeServer, data: list) -> Iterator[GoodSession]:
    """Start a concurrent good session before the test and check it completed after."""
    worker = GoodSession(server.address, data)
    worker.start()
    assert worker.started_training.wait(20)
    yield worker
    worker.resume.set()  # the misbehaviour is over: the good session must still be served to the end
    worker.check()


def _frame(kind: str, meta: dict, specs: list[dict], payload: bytes) -> bytes:
    """A hand-made frame (bypasses the encoder's own checks)."""
    header = json.dumps({"kind": kind, "meta": meta, "tensors": specs}).encode()
    return struct.pack("<4sB3sI", b"EFLW", 1, b"\0\0\0", len(header)) + header + payload


def _step_meta(n: int) -> dict:
    return {"batch": 0, "micro": 0, "num_micro": 1, "batch_size": n}


def _expect_stream_rejection(session: SessionHandle, frame: bytes, exc_type: type, code: grpc.StatusCode, match: str):
    session.send_raw(frame)
    with pytest.raises(exc_type, match=match) as info:
        session.recv()
    assert info.value.code == code
    return info.value


# -- authentication ------------------------------------------------------------------------------------------------
def test_forged_token_is_refused(client: EdgeClient, good: GoodSession) -> None:
    forged = TokenIssuer(b"another-secret-of-enough-length!").issue(7, 1, 1)
    model = fresh_model("vgg5")
    with pytest.raises(EdgeAuthError, match="signature") as info:
        client.open_session(forged, model.spec, K, model.split(K)[1].state_dict(), OPTIM)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_expired_token_is_refused(client: EdgeClient, good: GoodSession) -> None:
    with pytest.raises(EdgeAuthError, match="expired"):
        _open(client, ttl_s=-1.0)


def test_token_for_another_edge_server_is_refused(client: EdgeClient, good: GoodSession) -> None:
    with pytest.raises(EdgeAuthError, match="edge-b"):
        _open(client, edge_id="edge-b")
    session, _ = _open(client, edge_id="edge-a")
    session.close()


def test_garbage_token_is_refused(client: EdgeClient, good: GoodSession) -> None:
    model = fresh_model("vgg5")
    with pytest.raises(EdgeAuthError, match="malformed"):
        client.open_session("not-a-token", model.spec, K, model.split(K)[1].state_dict(), OPTIM)


@pytest.mark.parametrize(
    "intruder", [{"node": 2}, {"node": 1, "server_round": 2}, {"node": 1, "run": 8}], ids=["node", "round", "run"]
)
def test_other_nodes_token_cannot_drive_or_read_a_session(
    client: EdgeClient, good: GoodSession, data: list, intruder: dict
) -> None:
    victim, head = _open(client, node=1)
    x, y = data[0]
    victim.step(head(x).detach(), y, batch=0)
    reply = OpenReply(victim.session_id, "edge-a", victim.input_shape, True)
    stolen = ISSUER.issue(intruder.get("run", 7), intruder["node"], intruder.get("server_round", 1))
    # Driving the victim's session over a stream of one's own is refused ...
    attacker = SessionHandle(client, reply, stolen, K)
    with pytest.raises(EdgeAuthError, match="does not own"):
        attacker.step(head(x).detach(), y, batch=1)
    # ... and so is reading its weights.
    attacker = SessionHandle(client, reply, stolen, K)
    with pytest.raises(EdgeAuthError, match="does not own"):
        attacker.close()
    # The victim is unharmed.
    victim.step(head(x).detach(), y, batch=1)
    _, metrics = victim.close()
    assert metrics.batches == 2


# -- malformed messages ---------------------------------------------------------------------------------------------
def test_malformed_tensor_bytes_are_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    frame = StepRequest(head(x).detach(), y, batch=0, batch_size=len(y)).to_bytes()
    err = _expect_stream_rejection(
        session, frame[:-5], InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, "needs .* bytes"
    )
    assert "labels" in err.detail


def test_trailing_bytes_and_bad_magic_are_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    frame = StepRequest(head(x).detach(), y, batch=0, batch_size=len(y)).to_bytes()
    _expect_stream_rejection(
        session, frame + b"xx", InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, "unexpected"
    )
    session, _ = _open(client)
    _expect_stream_rejection(
        session, b"JUNK" + frame[4:], InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, "magic"
    )


def test_wrong_activation_shape_is_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, _ = _open(client)
    _x, y = data[0]
    frame = StepRequest(torch.zeros(len(y), 32, 7, 7), y, batch=0, batch_size=len(y)).to_bytes()
    _expect_stream_rejection(
        session, frame, InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, r"shape \[8, 32, 7, 7\]"
    )
    # The client API checks it locally too, before sending anything.
    session, _ = _open(client)
    with pytest.raises(InvalidMessageError, match="input shape"):
        session.send(torch.zeros(len(y), 32, 7, 7), y, batch=0)
    session.close()


def test_disallowed_dtype_is_rejected(client: EdgeClient, good: GoodSession) -> None:
    session, _ = _open(client)
    n = 2
    specs = [
        {"name": "activations", "dtype": "float64", "shape": [n, 32, 14, 14]},
        {"name": "labels", "dtype": "int64", "shape": [n]},
    ]
    frame = _frame("step", _step_meta(n), specs, bytes(n * 32 * 14 * 14 * 8 + n * 8))
    _expect_stream_rejection(session, frame, InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, "float64")
    # Whitelisted by the codec but not as activations:
    session, _ = _open(client)
    frame = StepRequest(torch.zeros(n, 32, 14, 14, dtype=torch.int32), torch.zeros(n, dtype=torch.long), 0, 0, 1, n)
    _expect_stream_rejection(
        session, frame.to_bytes(), InvalidMessageError, grpc.StatusCode.INVALID_ARGUMENT, "activations have dtype"
    )


def test_labels_out_of_range_are_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    session.send(head(x).detach(), torch.full_like(y, 10), batch=0)
    with pytest.raises(InvalidMessageError, match=r"labels must be in \[0, 10\)"):
        session.recv()


def test_oversized_message_is_rejected_by_the_server(client: EdgeClient, good: GoodSession) -> None:
    session, _ = _open(client, k=1)  # activations (n, 32, 28, 28): 100 KB per sample
    n = 40
    session.send(torch.zeros(n, 32, 28, 28), torch.zeros(n, dtype=torch.long), batch=0)
    with pytest.raises(MessageTooLargeError) as info:
        session.recv()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_oversized_message_is_refused_locally_before_sending(server: EdgeServer, good: GoodSession) -> None:
    with EdgeClient(server.address, max_message_bytes=LIMIT) as small:
        session, _ = _open(small, k=1)
        with pytest.raises(MessageTooLargeError, match="larger than the limit"):
            session.send(torch.zeros(40, 32, 28, 28), torch.zeros(40, dtype=torch.long), batch=0)
        assert session.pending == 0
        session.close()


def test_garbage_open_request_is_rejected(client: EdgeClient, good: GoodSession) -> None:
    with pytest.raises(InvalidMessageError, match="shorter than"):
        client.call(METHOD_OPEN, b"garbage")


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda sd: sd.pop(next(iter(sd))), "missing"),
        (lambda sd: sd.update({"blocks.0.0.weight": torch.zeros(1)}), "unexpected"),
        (lambda sd: sd.update({k: v.half() for k, v in list(sd.items())[:1]}), "torch.float16"),
    ],
    ids=["missing-key", "extra-key", "wrong-dtype"],
)
def test_bad_tail_state_is_rejected(client: EdgeClient, good: GoodSession, mutate, match: str) -> None:
    model = fresh_model("vgg5")
    state = model.split(K)[1].state_dict()
    mutate(state)
    with pytest.raises(InvalidMessageError, match=match):
        client.open_session(token(), model.spec, K, state, OPTIM)


def test_unknown_model_is_rejected(client: EdgeClient, good: GoodSession) -> None:
    spec = fresh_model("vgg5").spec
    bad = type(spec)("nonexistent", spec.in_shape, spec.num_classes)
    with pytest.raises(InvalidMessageError, match="unknown model"):
        client.open_session(token(), bad, 1, {}, OPTIM)


# -- session state ------------------------------------------------------------------------------------------------
def test_unknown_session_is_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    ghost = SessionHandle(client, OpenReply("0" * 32, "edge-a", (32, 14, 14), True), token(), K)
    _x, y = data[0]
    with pytest.raises(SessionNotFoundError) as info:
        ghost.step(torch.zeros(len(y), 32, 14, 14), y, batch=0)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    ghost = SessionHandle(client, OpenReply("0" * 32, "edge-a", (32, 14, 14), True), token(), K)
    with pytest.raises(SessionNotFoundError):
        ghost.close()


def test_out_of_order_micro_batch_is_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    with pytest.raises(SessionStateError, match="starts with micro-batch 0"):
        session.step(head(x[:4]).detach(), y[:4], batch=0, micro=1, num_micro=2, batch_size=8)
    session, head = _open(client)
    session.step(head(x[:4]).detach(), y[:4], batch=0, micro=0, num_micro=2, batch_size=8)
    with pytest.raises(SessionStateError, match="expected micro-batch 1/2 of batch 0"):
        session.step(head(x[4:]).detach(), y[4:], batch=1, micro=1, num_micro=2, batch_size=8)
    session, head = _open(client)
    session.step(head(x[:4]).detach(), y[:4], batch=0, micro=0, num_micro=2, batch_size=8)
    with pytest.raises(SessionStateError, match="batch 0 is incomplete"):
        session.step(head(x[4:]).detach(), y[4:], batch=1, micro=0, num_micro=2, batch_size=8)


def test_repeated_batch_index_is_rejected(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    session.step(head(x).detach(), y, batch=3)
    with pytest.raises(SessionStateError, match="does not increase"):
        session.step(head(x).detach(), y, batch=3)


def test_close_with_pending_results_is_refused_locally(client: EdgeClient, good: GoodSession, data: list) -> None:
    session, head = _open(client)
    x, y = data[0]
    session.send(head(x).detach(), y, batch=0)
    with pytest.raises(SessionStateError, match="not received"):
        session.close()
    session.recv()
    session.close()


def test_client_disconnect_mid_stream_drops_only_that_session(
    server: EdgeServer, client: EdgeClient, good: GoodSession, data: list
) -> None:
    session, head = _open(client)
    x, y = data[0]
    session.step(head(x).detach(), y, batch=0)
    session.send(head(x).detach(), y, batch=1)
    session.abort()
    assert wait_until(lambda: session.session_id not in server.registry.ids())


def test_too_many_sessions_are_refused() -> None:
    config = EdgeServerConfig(max_sessions=1)
    with EdgeServer(secret=SECRET, config=config) as srv, EdgeClient(srv.address) as c:
        first, _ = _open(c)
        with pytest.raises(EdgeOverloadedError, match="1 sessions"):
            _open(c, node=2)
        first.close()
        _open(c, node=2)[0].close()


def test_health_reports_sessions(server: EdgeServer, client: EdgeClient) -> None:
    session, _ = _open(client)
    info = client.health()
    assert info.status == "serving" and info.edge_id == "edge-a" and info.sessions >= 1 and info.version == 1
    session.close()


def test_unreachable_edge_server_raises_edge_unavailable() -> None:
    with EdgeServer(secret=SECRET) as srv:
        address = srv.address
    with EdgeClient(address, timeout_s=5) as c:
        with pytest.raises(EdgeUnavailableError):
            c.health()
        with pytest.raises(EdgeUnavailableError):
            _open(c)
