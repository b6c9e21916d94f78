"""The attacks of issue 15 against real services on loopback: every one is refused with the right status, nothing
is allocated for a refused request, half-open calls hold no worker, and legitimate traffic is served meanwhile.

Bounded: a few dozen calls, small models (VGG5 at width 0.25), deadlines of 1 s (asserted only one-sided).
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import grpc
import pytest
import torch

from benchmarks._attacks import (
    DEPLOY,
    FORWARD,
    PING,
    PREDICT,
    HalfOpenFlood,
    attempt,
    deep_json_frame,
    edge_token_attacks,
    foreign_stream,
    nan_step,
    open_frame,
    stride_overflow_frame,
)
from edgeflower.edge import EdgeServer, EdgeServerConfig
from edgeflower.edge import session as session_module
from edgeflower.edge.pool import EdgePool
from edgeflower.models.zoo import build_model
from edgeflower.serving import Controller, InferenceNode, NodeClient, ServingClient, build_bundle
from edgeflower.serving.controller import ControllerConfig
from edgeflower.transport import EdgeClient, OptimizerSettings
from edgeflower.transport.auth import ROLES, RPC_ROLES, SESSION_OWNER, TokenIssuer
from edgeflower.transport.codec import Frame, encode_frame
from edgeflower.transport.errors import EdgeAuthError, EdgeOverloadedError, InvalidMessageError, SessionStateError
from edgeflower.transport.grpc_server import ServerOptions
from edgeflower.transport.messages import CloseRequest, OpenRequest
from edgeflower.transport.migration import ImportRequest, MigrateRequest, ResumeRequest
from edgeflower.transport.service import METHOD_CLOSE, METHOD_HEALTH, METHOD_OPEN, SERVICE
from tests._edge_helpers import wait_until

SECRET = b"security-attack-test-secret-0123456789"
OTHER = b"an-attacker-guessed-this-secret-000000"
ISSUER = TokenIssuer(SECRET)
OTHER_ISSUER = TokenIssuer(OTHER)
OPTIM = OptimizerSettings(lr=0.05, momentum=0.9)
PD, INV, RE = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def _small():
    torch.manual_seed(0)
    return build_model("vgg5", width=0.25)


def _state_size(model) -> int:
    return sum(t.numel() for t in model.state_dict().values())


@pytest.fixture(scope="module")
def edge():
    config = EdgeServerConfig(max_model_params=_state_size(_small()), first_message_s=1.0, max_sessions_per_node=2)
    with EdgeServer(secret=SECRET, edge_id="edge-s", config=config) as server:
        yield server


def _open(client: EdgeClient, token: str, model=None, k: int = 2):
    model = model or _small()
    return client.open_session(token, model.spec, k, model.split(k)[1].state_dict(), OPTIM)


def test_forged_expired_foreign_wrong_role_and_malformed_requests_are_refused_by_the_edge_server(edge):
    outcomes = edge_token_attacks(edge.address, SECRET, "edge-s", OTHER)
    assert len(outcomes) >= 12
    assert [o for o in outcomes if not o.rejected] == []
    assert edge.num_sessions == 0


def test_an_open_token_opens_one_session_and_only_an_identical_retry_gets_it_back(edge):
    token = ISSUER.issue(11, 1, 1, "edge-s")
    frame = open_frame(token, width=0.25)
    first = attempt("open", grpc.StatusCode.OK, edge.address, METHOD_OPEN, frame)
    again = attempt("retry", grpc.StatusCode.OK, edge.address, METHOD_OPEN, frame)  # a lost reply, retried
    assert first.rejected and again.rejected and edge.num_sessions == 1
    other = attempt("reuse", PD, edge.address, METHOD_OPEN, open_frame(token, width=0.25, k=3))
    assert other.rejected and "single-use" in other.detail and edge.num_sessions == 1
    for sid in edge.registry.ids():
        edge.registry.drop(sid, "test done")


def test_a_node_holds_at_most_its_session_quota_and_tokens_of_past_rounds_are_refused(edge):
    with EdgeClient(edge.address, retries=0) as client:
        held = [_open(client, ISSUER.issue(12, 4, 2, "edge-s")) for _ in range(2)]
        with pytest.raises(EdgeOverloadedError, match="at most 2"):
            _open(client, ISSUER.issue(12, 4, 2, "edge-s"))
        _open(client, ISSUER.issue(12, 5, 2, "edge-s")).abort()  # other nodes are not locked out
        for h in held:
            h.abort()
        assert wait_until(lambda: edge.num_sessions == 0)
        with pytest.raises(SessionStateError, match="round 1"):
            _open(client, ISSUER.issue(12, 4, 1, "edge-s"))


def test_an_oversized_model_or_open_message_is_refused_before_anything_is_built(edge, monkeypatch):
    built_for_real = []
    real = session_module.build_model

    def spy(spec, *args, **kwargs):
        model = real(spec, *args, **kwargs)
        if next(model.parameters()).device.type != "meta":
            built_for_real.append(spec)
        return model

    monkeypatch.setattr(session_module, "build_model", spy)
    huge = open_frame(ISSUER.issue(13, 1, 1, "edge-s"), with_state=False, width=16)  # ~117 M parameters
    assert len(huge) < 2048
    outcome = attempt("huge-spec", INV, edge.address, METHOD_OPEN, huge)
    assert outcome.rejected and "limit" in outcome.detail and built_for_real == []
    padded = encode_frame("open", {"pad": "x" * (edge.config.open_bytes + 10)})
    assert attempt("huge-message", RE, edge.address, METHOD_OPEN, padded).rejected


def test_a_request_without_a_valid_token_is_refused_before_its_tensors_are_read(edge, monkeypatch):
    from edgeflower.edge import migration as migration_module
    from edgeflower.edge import server as server_module
    from edgeflower.transport import codec

    read: list[bytes] = []  # the controller's heartbeats are decoded meanwhile: they carry valid tokens

    def decode_frame(data, limits=None):  # type: ignore[no-untyped-def]
        read.append(bytes(data))
        return codec.decode_frame(data, limits)

    for module in (server_module, migration_module):
        monkeypatch.setattr(module, "decode_frame", decode_frame)
    forged = OTHER_ISSUER.issue(14, 1, 1, "edge-s")
    for token in ("not-a-token", forged):  # the tail's tensors are never copied for these
        assert attempt("open", PD, edge.address, METHOD_OPEN, open_frame(token, width=0.25)).rejected
        state = ImportRequest(token, "0" * 64, bytes(1 << 20)).to_bytes()  # a 1 MiB "state" without its token
        assert attempt("import", PD, edge.address, f"/{SERVICE}/Import", state).rejected
    assert read == [] and edge.num_sessions == 0


def test_an_open_refused_for_its_tail_state_keeps_no_template_and_traces_shapes_on_the_meta_device(edge, monkeypatch):
    from edgeflower.edge.tail_pool import TAILS, TailPool

    real_runs: list[str] = []
    real = session_module.build_model

    def spy(spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        model = real(spec, *args, **kwargs)
        if next(model.parameters()).device.type != "meta":
            hook = model.blocks[0].register_forward_hook(lambda *_: real_runs.append(spec.name))
            model.hooks = [hook]
        return model

    monkeypatch.setattr(session_module, "build_model", spy)
    model = _small()
    spec = dataclasses.replace(model.spec, in_shape=(1, 28, 28), options={**model.spec.options, "width": 0.2})
    frame = OpenRequest(ISSUER.issue(15, 1, 1, "edge-s"), spec, 2, OPTIM, {}).to_bytes()  # no tail state at all
    outcome = attempt("no-state", INV, edge.address, METHOD_OPEN, frame)
    assert outcome.rejected and "does not match" in outcome.detail
    assert TailPool.key(spec, 2) not in TAILS._templates  # nothing kept for a refused Open
    assert real_runs == []  # the head's output shape came from the meta device, not from a forward pass


def test_an_open_with_an_infinite_or_overflowing_model_option_is_refused_as_invalid_not_internal(edge):
    spec = _small().spec.to_dict()
    for width in (float("inf"), float("nan"), -1e308 * 32):
        frame = encode_frame(
            "open", {"token": ISSUER.issue(16, 1, 1, "edge-s"), "model": {**spec, "options": {"width": width}}}
        )
        outcome = attempt(f"width-{width}", INV, edge.address, METHOD_OPEN, frame)
        assert outcome.rejected and "not finite" in outcome.detail, outcome


def test_non_finite_activations_are_refused_and_a_foreign_token_cannot_drive_a_session(edge):
    with EdgeClient(edge.address) as client:
        token = ISSUER.issue(14, 1, 1, "edge-s")
        session = _open(client, token)
        assert foreign_stream(edge.address, session.session_id, ISSUER.issue(14, 2, 1, "edge-s")).rejected
        outcome = nan_step(session.session_id, token, edge.address, session.input_shape)
        assert outcome.rejected and "NaN" in outcome.detail
        assert wait_until(lambda: edge.num_sessions == 0)  # the poisoned session is gone, not trained


def test_half_open_calls_end_with_deadline_exceeded_while_health_and_open_are_served(edge):
    flood = HalfOpenFlood(edge.address, METHOD_OPEN, n=24).start()
    try:
        with EdgeClient(edge.address, retries=0) as client:
            assert client.health().status == "serving"
            _open(client, ISSUER.issue(15, 1, 1, "edge-s")).close()
        assert wait_until(lambda: sum(flood.ended.values()) >= 24, timeout_s=60)  # deadline 1 s, bounded generously
    finally:
        flood.stop()
    assert flood.outcome.rejected, flood.ended
    assert attempt("health", grpc.StatusCode.OK, edge.address, METHOD_HEALTH, encode_frame("health")).rejected


def test_plaintext_on_a_non_loopback_address_needs_tls_or_an_explicit_insecure_option(caplog):
    with pytest.raises(ValueError, match="refuses to serve plaintext"):
        EdgeServer("0.0.0.0", 0, secret=SECRET).start()
    with pytest.raises(ValueError, match="refuses to serve plaintext"):
        InferenceNode("0.0.0.0", 0, secret=SECRET).start()
    caplog.set_level(logging.WARNING)
    with EdgeServer("0.0.0.0", 0, secret=SECRET, config=EdgeServerConfig(insecure=True)):
        pass
    assert any("INSECURE" in r.getMessage() and "session tokens" in r.getMessage() for r in caplog.records)


# -- the serving chain ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(fmnist_test):
    model = _small().eval()
    data = fmnist_test.subset(torch.arange(200))
    bundle = build_bundle(model, (0, 3, 7), data, data, exit_epochs=1)
    options = ServerOptions(first_message_s=1.0)
    nodes = [InferenceNode(secret=SECRET, max_model_params=_state_size(model), options=options) for _ in range(2)]
    for n in nodes:
        n.start()
    config = ControllerConfig(heartbeat_s=0.1, readmit_every=1, first_message_s=1.0)
    ctl = Controller(bundle, [n.address for n in nodes], SECRET, config=config).start()
    try:
        yield ctl, nodes, fmnist_test.x[:4].clone()
    finally:
        ctl.stop()
        for n in nodes:
            n.stop()


def test_only_the_controller_deploys_to_or_forwards_through_nodes(chain):
    ctl, nodes, x = chain
    client = ISSUER.issue(0, 1, 0, role="client")
    before = ServingClient(ctl.address, client).predict(x).logits
    version = ctl.route.version
    for role in ("client", "device", "migration"):
        stolen = NodeClient(nodes[0].address, ISSUER.issue(0, 0, 0, role=role))
        try:
            with pytest.raises(EdgeAuthError, match="not accepted"):
                stolen.deploy(
                    "evil",
                    ctl.bundle.spec,
                    0,
                    3,
                    {k: torch.zeros_like(v) for k, v in ctl.bundle.model.segment(0, 3).state_dict().items()},
                )
            with pytest.raises(EdgeAuthError, match="not accepted"):
                stolen.forward(version, "bypass", x)
            with pytest.raises(EdgeAuthError, match="not accepted"):
                stolen.ping()
        finally:
            stolen.close()
    assert nodes[0].deployment.version == ctl.route.version
    with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="controller"), deadline_s=1) as wrong:
        with pytest.raises(EdgeAuthError, match="not accepted"):
            wrong.predict(x)
    after = ServingClient(ctl.address, client).predict(x).logits
    assert torch.equal(before, after)


def test_nodes_and_controller_refuse_oversized_models_non_finite_inputs_and_malformed_frames(chain):
    ctl, nodes, x = chain
    controller_token = ISSUER.issue(0, 0, 0, role="controller")
    node = NodeClient(nodes[0].address, controller_token)
    try:
        with pytest.raises(InvalidMessageError, match="limit"):
            node.deploy("huge", _huge_spec(), 0, 3, {})
        with pytest.raises(InvalidMessageError, match="NaN"):
            node.forward(ctl.route.version, "nan", torch.full_like(x, float("nan")))
    finally:
        node.close()
    with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as client:
        with pytest.raises(InvalidMessageError, match="NaN"):
            client.predict(torch.full_like(x, float("inf")))
    for address, method in ((nodes[0].address, DEPLOY), (nodes[0].address, FORWARD), (ctl.address, PREDICT)):
        for frame in (stride_overflow_frame("deploy"), deep_json_frame("forward")):
            assert attempt("malformed", INV, address, method, frame).rejected
    assert nodes[0].deployment.version == ctl.route.version


def test_serving_requests_without_a_valid_token_are_refused_before_their_tensors_are_read(chain, monkeypatch):
    from edgeflower.serving import node as node_module
    from edgeflower.serving import protocol
    from edgeflower.serving import service as service_module
    from edgeflower.transport import codec

    ctl, nodes, x = chain
    read: list[bytes] = []  # the controller's heartbeats are decoded meanwhile: they carry valid tokens

    def decode_frame(data, limits=None):  # type: ignore[no-untyped-def]
        read.append(bytes(data))
        return codec.decode_frame(data, limits)

    for module in (protocol, node_module, service_module):  # wherever a handler may decode
        monkeypatch.setattr(module, "decode_frame", decode_frame, raising=False)
    pad = {"pad": torch.zeros(64 * 1024, dtype=torch.uint8)}
    weights = {"w": torch.zeros(1 << 18)}  # 1 MiB "weights" without their token
    for controller, client in (("not-a-token", "not-a-token"), (OTHER_ISSUER.issue(0, 0, 0, role="controller"), None)):
        client = client or OTHER_ISSUER.issue(0, 1, 0, role="client")
        calls = [
            (nodes[0].address, DEPLOY, encode_frame("deploy", {"token": controller}, weights)),
            (nodes[0].address, FORWARD, encode_frame("forward", {"token": controller}, {"x": x})),
            (nodes[0].address, PING, encode_frame("ping", {"token": controller}, pad)),
            (ctl.address, PREDICT, encode_frame("predict", {"token": client, "request_id": "r"}, {"x": x})),
            (ctl.address, STATUS, encode_frame("status", {"token": client})),
        ]
        for address, method, frame in calls:
            assert attempt("no token", PD, address, method, frame).rejected, method
            assert frame not in read, method  # not decoded past its header
    assert nodes[0].deployment.version == ctl.route.version


def test_status_and_ping_larger_than_a_token_and_a_probe_are_refused_on_their_size(chain):
    from edgeflower.serving.protocol import MAX_CONTROL_BYTES, MAX_PING_BYTES

    ctl, nodes, x = chain
    token = ISSUER.issue(0, 0, 0, nodes[0].identity, role="controller")
    huge_pad = {"pad": torch.zeros(MAX_PING_BYTES, dtype=torch.uint8)}
    assert attempt("huge ping", RE, nodes[0].address, PING, encode_frame("ping", {"token": token}, huge_pad)).rejected
    client = ISSUER.issue(0, 1, 0, role="client")
    status = encode_frame("status", {"token": client, "junk": "x" * MAX_CONTROL_BYTES})
    assert attempt("huge status", RE, ctl.address, STATUS, status).rejected
    probe = NodeClient(nodes[0].address, token)
    try:
        assert probe.probe(MAX_PING_BYTES - MAX_CONTROL_BYTES) >= 0  # the largest probe AdaptiveSplitServing sends
    finally:
        probe.close()
    with ServingClient(ctl.address, client) as serving:
        assert serving.predict(x).logits.shape == (4, 10)


def _huge_spec():
    with torch.device("meta"):
        return build_model("vgg5", width=16).spec


def test_half_open_calls_do_not_starve_heartbeats_or_predictions(chain):
    ctl, nodes, x = chain
    floods = [HalfOpenFlood(nodes[0].address, PING, n=16).start(), HalfOpenFlood(ctl.address, PREDICT, n=16).start()]
    try:
        with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as client:
            for i in range(3):
                assert client.predict(x, f"during-flood-{i}").logits.shape == (4, 10)
        assert wait_until(lambda: all(sum(f.ended.values()) >= 16 for f in floods), timeout_s=60)
    finally:
        for f in floods:
            f.stop()
    assert all(f.outcome.rejected for f in floods), [f.ended for f in floods]
    assert ctl.dead == set()


def test_a_dead_node_that_answers_heartbeats_again_is_readmitted_and_the_route_replanned(chain):
    ctl, _, x = chain
    ctl.fail_over(1, "test")  # declared dead (e.g. after missed heartbeats) although it is back
    assert 1 in ctl.dead
    assert wait_until(lambda: 1 not in ctl.dead, timeout_s=30)
    assert ctl.readmissions and ctl.readmissions[-1]["node"] == 1
    assert ctl.route.technique == "initial" and ctl.route.nodes() == [0, 1]
    with ServingClient(ctl.address, ISSUER.issue(0, 1, 0, role="client")) as client:
        assert client.predict(x, "after-readmission").technique == "initial"


def test_clients_retry_busy_refusals_with_backoff_and_the_same_request(monkeypatch):
    import edgeflower.serving.client as serving_client

    seen: list[bytes] = []

    def busy_twice(channel, method, frame, timeout_s, address, limits):
        seen.append(frame)
        if len(seen) < 3:
            raise EdgeOverloadedError("controller is busy")
        return Frame("prediction", {"technique": "initial"}, {"logits": torch.zeros(1, 10)})

    monkeypatch.setattr(serving_client, "call", busy_twice)
    with ServingClient("127.0.0.1:1", "token", deadline_s=30) as client:
        answer = client.predict(torch.zeros(1, 1, 28, 28), "same-id")
    assert answer.attempts == 3 and len(set(seen)) == 1  # exactly the same request (id) every time

    calls: list[bytes] = []

    def open_busy_once(self, method, frame, timeout_s=None):
        calls.append(frame)
        if len(calls) == 1:
            raise EdgeOverloadedError("busy")
        return "reply"

    monkeypatch.setattr(EdgeClient, "call", open_busy_once)
    with EdgeClient("127.0.0.1:1", retry_backoff_s=0.01) as client:
        assert client.call_retrying(METHOD_OPEN, b"frame") == "reply"
    assert calls == [b"frame", b"frame"]


# -- the role table, token binding and rounds ---------------------------------------------------------------------
STATUS = "/edgeflower.Serving/Status"
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _signed(payload: dict) -> str:
    """A token signed with the real secret whatever it says (e.g. the retired ``node`` role no issuer mints)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    return f"{body}.{b64(hmac.new(SECRET, b'edgeflower-token-v2.' + body.encode(), hashlib.sha256).digest())}"


def _tokens(run: int, node: int, server_round: int, bound: str | None) -> dict[str, str]:
    """A token of every role (and of the retired ``node`` role) for the same run, node, round and service."""
    import time

    tokens = {role: ISSUER.issue(run, node, server_round, bound, role=role) for role in sorted(ROLES)}
    now = time.time()
    tokens["node"] = _signed(
        {"v": 2, "role": "node", "run": run, "node": node, "round": server_round, "edge": bound, "iat": now,
         "exp": now + 60, "nonce": "retired-role"}
    )  # fmt: skip
    return tokens


def test_the_role_table_names_every_rpc_of_the_edge_server_inference_node_and_controller(edge, chain):
    ctl, nodes, _ = chain
    served = {
        "edge": set(edge._handlers()),
        "node": set(nodes[0].rpc_methods),
        "controller": set(ctl.rpc_methods),
    }
    table: dict[str, set[str]] = {}
    for key in RPC_ROLES:
        service, method = key.split("/")
        table.setdefault(service, set()).add(method)
    assert table == served
    assert "node" not in ROLES  # an inference node originates no call: no service accepts anything from one
    for key, accepted in RPC_ROLES.items():
        assert len(accepted) <= 2 and accepted <= ROLES | {SESSION_OWNER}, key
        assert key == "edge/Open" or len(accepted) <= 1, key  # Open: device, or migration (restart mode)


def _try_every_role(calls: dict) -> int:
    """Call each RPC of ``calls`` (key -> address, path, bound edge, frame from a token) with a token of every role;
    the roles it does not accept must be refused for their role. Returns how many refusals were checked."""
    tried = 0
    for key, (address, path, bound, frame) in calls.items():
        accepted = RPC_ROLES[key]
        for role, token in _tokens(51, tried + 1, 1, bound).items():
            outcome = attempt(f"{key}-with-{role}", PD, address, path, frame(token))
            if role in accepted:  # passes authentication (and may fail later, e.g. on the import's seal)
                assert "not accepted here" not in outcome.detail, (key, role, outcome)
            else:
                assert outcome.got in REFUSED, (key, role, outcome)
                assert "not accepted here" in outcome.detail or "unknown token role" in outcome.detail
                tried += 1
    return tried


def test_every_rpc_refuses_every_role_but_the_one_it_accepts(edge, chain):
    ctl, nodes, x = chain
    version, node_id = ctl.route.version, nodes[0].identity
    zeros = torch.zeros_like(x)

    def node_frame(kind: str, token: str) -> bytes:
        meta = {"token": token, "version": version, "request_id": "r", "start": 0, "stop": 3}
        return encode_frame(kind, meta, {"x": zeros} if kind == "forward" else {})

    def edge_frame(method: str, token: str, owner_sid: str = "") -> bytes:
        return {
            "Open": lambda: open_frame(token, width=0.25),
            "Import": lambda: ImportRequest(token, "00" * 32, b"x").to_bytes(),
            "Resume": lambda: ResumeRequest(token).to_bytes(),
            "Close": lambda: CloseRequest(owner_sid, token).to_bytes(),
            "Migrate": lambda: MigrateRequest(owner_sid, token, edge.address, token).to_bytes(),
        }[method]()

    calls = {
        "node/Deploy": (nodes[0].address, DEPLOY, node_id, lambda t: node_frame("deploy", t)),
        "node/Forward": (nodes[0].address, FORWARD, node_id, lambda t: node_frame("forward", t)),
        "node/Ping": (nodes[0].address, PING, node_id, lambda t: node_frame("ping", t)),
        "controller/Predict": (
            ctl.address,
            PREDICT,
            None,
            lambda t: encode_frame("predict", {"token": t, "request_id": "role-walk"}, {"x": x}),
        ),
        "controller/Status": (ctl.address, STATUS, None, lambda t: encode_frame("status", {"token": t})),
    }
    for method in ("Open", "Import", "Resume"):
        calls[f"edge/{method}"] = (edge.address, f"/{SERVICE}/{method}", "edge-s", partial(edge_frame, method))
    tried = _try_every_role(calls)
    for s in edge.registry.ids():  # sessions the accepted roles opened
        edge.registry.drop(s, "test done")
    # the session-owner RPCs: only the very token that opened the session, not even another token of its node
    opened = attempt(
        "open", grpc.StatusCode.OK, edge.address, METHOD_OPEN, open_frame(ISSUER.issue(52, 1, 1, "edge-s"), width=0.25)
    )
    assert opened.rejected
    sid = edge.registry.ids()[0]
    for role, token in _tokens(52, 1, 1, "edge-s").items():
        for method in ("Close", "Migrate"):
            outcome = attempt(
                f"{method}-with-{role}", PD, edge.address, f"/{SERVICE}/{method}", edge_frame(method, token, sid)
            )
            assert outcome.got in REFUSED and "does not own" in outcome.detail, (method, role, outcome)
        assert foreign_stream(edge.address, sid, token).rejected, role
        tried += 3
    assert tried >= 11 * 4
    assert edge.num_sessions == 1 and nodes[0].deployment.version == version
    for s in edge.registry.ids():
        edge.registry.drop(s, "test done")


def test_a_controller_token_for_one_node_is_refused_by_every_other_node(chain):
    ctl, nodes, x = chain
    assert [n.identity for n in nodes] == ctl.node_ids  # by default a node's id is the address the controller dials
    for i, mine in enumerate(nodes):
        token = ctl.node_token(i, 60.0)
        _ping(mine.address, token)
        stolen = NodeClient(nodes[1 - i].address, token)
        try:
            for call in (stolen.ping, lambda: stolen.forward(ctl.route.version, "stolen", x)):  # noqa: B023
                with pytest.raises(EdgeAuthError, match="token is for") as info:
                    call()
                assert info.value.code in REFUSED
        finally:
            stolen.close()
    with pytest.raises(ValueError, match="once"):
        Controller(ctl.bundle, [n.address for n in nodes], SECRET, node_ids=["same", "same"])
    named = InferenceNode(secret=SECRET, node_id="node-a")
    with named:
        assert named.identity == "node-a"
        _ping(named.address, ISSUER.issue(0, 0, 0, "node-a", role="controller"))
        for bound in ("node-b", named.address):
            with pytest.raises(EdgeAuthError, match="token is for"):
                _ping(named.address, ISSUER.issue(0, 0, 0, bound, role="controller"))


def _ping(address: str, token: str) -> None:
    client = NodeClient(address, token)
    try:
        client.ping()
    finally:
        client.close()


def test_edge_tokens_are_bound_to_their_edge_server_run_node_and_round(edge):
    foreign = open_frame(ISSUER.issue(53, 1, 1, "edge-other"), width=0.25)
    outcome = attempt("foreign-edge", PD, edge.address, METHOD_OPEN, foreign)
    assert outcome.rejected and "edge-other" in outcome.detail
    migration = ImportRequest(ISSUER.issue(53, 1, 1, "edge-other", role="migration"), "00" * 32, b"x").to_bytes()
    outcome = attempt("foreign-import", PD, edge.address, f"/{SERVICE}/Import", migration)  # the migration peer path
    assert outcome.rejected and "edge-other" in outcome.detail
    with EdgeServer(secret=SECRET, edge_id="edge-t") as other:
        token = ISSUER.issue(53, 1, 1, "edge-t")  # issued for edge-t: refused by edge-s, accepted by edge-t
        assert attempt("for-t-at-s", PD, edge.address, METHOD_OPEN, open_frame(token, width=0.25)).rejected
        assert attempt(
            "for-t-at-t", grpc.StatusCode.OK, other.address, METHOD_OPEN, open_frame(token, width=0.25)
        ).rejected
    owner = ISSUER.issue(54, 1, 2, "edge-s")
    assert attempt("open", grpc.StatusCode.OK, edge.address, METHOD_OPEN, open_frame(owner, width=0.25)).rejected
    sid = edge.registry.ids()[0]
    for intruder in ((55, 1, 2), (54, 2, 2), (54, 1, 3)):  # another run, another node, another round
        token = ISSUER.issue(*intruder, "edge-s")
        outcome = attempt("close", PD, edge.address, METHOD_CLOSE, CloseRequest(sid, token).to_bytes())
        assert outcome.rejected and "does not own" in outcome.detail, intruder
    assert attempt(
        "close", grpc.StatusCode.OK, edge.address, METHOD_CLOSE, CloseRequest(sid, owner).to_bytes()
    ).rejected


def test_an_edge_server_refuses_tokens_of_rounds_older_than_the_newest_it_has_seen_for_the_run(edge):
    fp = grpc.StatusCode.FAILED_PRECONDITION

    def open_(run: int, node: int, server_round: int, code: grpc.StatusCode, role: str = "device"):
        token = ISSUER.issue(run, node, server_round, "edge-s", role=role)
        outcome = attempt("open", code, edge.address, METHOD_OPEN, open_frame(token, width=0.25))
        assert outcome.rejected, outcome
        return outcome

    assert edge.newest_round(61) is None
    open_(61, 1, 3, grpc.StatusCode.OK)
    assert edge.newest_round(61) == 3
    # node 2 never trained here: its still-valid token of round 2 is refused all the same (round 3 has begun)
    assert "seen round 3" in open_(61, 2, 2, fp).detail
    open_(61, 2, 2, fp, role="migration")  # restart mode too
    import_old = ImportRequest(ISSUER.issue(61, 2, 2, "edge-s", role="migration"), "00" * 32, b"x").to_bytes()
    assert attempt("import", fp, edge.address, f"/{SERVICE}/Import", import_old).rejected
    open_(61, 2, 3, grpc.StatusCode.OK)
    open_(62, 1, 1, grpc.StatusCode.OK)  # rounds are per run
    edge.advance_round(62, 5)  # announced by the ServerApp (the in-process pool, for every round it plans)
    open_(62, 3, 4, fp)
    edge.advance_round(62, 2)  # rounds never go back
    assert edge.newest_round(62) == 5
    for s in edge.registry.ids():
        edge.registry.drop(s, "test done")


def test_the_in_process_pool_announces_every_round_it_plans_to_its_edge_servers():
    pool = EdgePool.in_process(1)
    try:
        pool.assign(71, 1, 4)
        old = pool.issuer.issue(71, 2, 3, pool.edge_ids[0])  # a valid token of the previous round
        outcome = attempt(
            "old-round",
            grpc.StatusCode.FAILED_PRECONDITION,
            pool.addresses[0],
            METHOD_OPEN,
            open_frame(old, width=0.25),
        )
        assert outcome.rejected and "seen round 4" in outcome.detail
    finally:
        pool.stop()
