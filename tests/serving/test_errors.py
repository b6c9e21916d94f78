"""Malformed requests and wrong tokens get clear errors; the chain keeps serving; bundles load without pickle."""

from __future__ import annotations

import json

import grpc
import pytest
import torch

from edgeflower.models.zoo import build_model
from edgeflower.serving import Controller, InferenceNode, NodeClient, ServingBundle, ServingClient, build_bundle
from edgeflower.serving.controller import ControllerConfig
from edgeflower.serving.protocol import PREDICT
from edgeflower.serving.rpc import call, open_channel
from edgeflower.transport.auth import TokenIssuer
from edgeflower.transport.codec import Limits, encode_frame
from edgeflower.transport.errors import EdgeAuthError, EdgeUnavailableError, InvalidMessageError, SessionStateError
from tests._serving_helpers import SECRET, client_token

OTHER = b"another-secret-of-enough-length-0123"


@pytest.fixture(scope="module")
def chain(fmnist_test):
    """An (untrained) VGG5 bundle served over 3 in-process nodes."""
    torch.manual_seed(0)
    model = build_model("vgg5").eval()
    bundle = build_bundle(model, (0, 2, 4, 7), fmnist_test.subset(torch.arange(500)), fmnist_test, exit_epochs=1)
    nodes = [InferenceNode(secret=SECRET) for _ in range(3)]
    for n in nodes:
        n.start()
    ctl = Controller(bundle, [n.address for n in nodes], SECRET).start()
    try:
        yield ctl, nodes, fmnist_test.x[:8]
    finally:
        ctl.stop()
        for n in nodes:
            n.stop()


def _raw(ctl: Controller, frame: bytes):
    channel = open_channel(ctl.address, 2**20)
    try:
        return call(channel, PREDICT, frame, 5.0, ctl.address, Limits())
    finally:
        channel.close()


def test_malformed_predict_requests_are_rejected_with_clear_errors(chain):
    ctl, _, x = chain
    token = client_token()
    cases = {
        b"not a frame": "shorter than",
        encode_frame("predict", {"token": token, "request_id": "a"}): "lacks tensor 'x'",
        encode_frame("bogus", {"token": token}, {"x": x}): "expected a 'predict' message",
        encode_frame("predict", {"token": token, "request_id": "a"}, {"x": x[:, :, :5]}): "must be float32 of shape",
        encode_frame("predict", {"token": token, "request_id": "a"}, {"x": x.double().half()}): "must be float32",
        encode_frame("predict", {"token": token, "request_id": "bad id!"}, {"x": x}): "invalid request id",
        encode_frame("predict", {"token": token, "request_id": 7}, {"x": x}): "request_id",
    }
    for frame, message in cases.items():
        with pytest.raises(InvalidMessageError, match=message) as info:
            _raw(ctl, frame)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with ServingClient(ctl.address, token) as client:
        assert client.predict(x, "after-garbage").logits.shape == (8, 10)  # still serving


def test_wrong_tokens_are_refused_by_the_controller_and_the_nodes(chain):
    ctl, nodes, x = chain
    forged = TokenIssuer(OTHER).issue(0, 1, 0, role="client")
    expired = TokenIssuer(SECRET).issue(0, 1, 0, ttl_s=-1, role="client")
    for token in (forged, expired, "garbage"):
        with ServingClient(ctl.address, token) as client, pytest.raises(EdgeAuthError):
            client.predict(x, "tok")
        node = NodeClient(nodes[0].address, token)
        try:
            with pytest.raises(EdgeAuthError):
                node.forward(ctl.route.version, "tok", x)
            with pytest.raises(EdgeAuthError):
                node.deploy("v", ctl.bundle.spec, 0, 2, {})
        finally:
            node.close()
    assert nodes[0].deployment is not None and nodes[0].deployment.version == ctl.route.version


def test_nodes_refuse_stale_versions_and_weights_that_do_not_fit(chain):
    ctl, nodes, x = chain
    node = NodeClient(nodes[1].address, TokenIssuer(SECRET).issue(0, 1, 0, role="controller"))
    try:
        with pytest.raises(SessionStateError, match="version"):
            node.forward("stale", "r", x)
        with pytest.raises(InvalidMessageError, match="cannot build segment"):
            node.deploy("v2", ctl.bundle.spec, 2, 4, {"blocks.2.0.weight": torch.zeros(3)})
        with pytest.raises(InvalidMessageError, match="does not fit"):
            node.forward(ctl.route.version, "r", x)  # node 1 expects activations, not images
    finally:
        node.close()
    assert nodes[1].deployment.version == ctl.route.version  # a rejected deploy changes nothing


def test_a_request_id_reused_for_another_input_is_refused(chain):
    ctl, _, x = chain
    with ServingClient(ctl.address, client_token()) as client:
        first = client.predict(x, "reuse-me")
        assert client.predict(x, "reuse-me").replayed
        with pytest.raises(InvalidMessageError, match="different input"):
            client.predict(x + 1, "reuse-me")
        assert not first.replayed


def test_client_gives_up_with_unavailable_when_no_controller_answers():
    with ServingClient("127.0.0.1:1", client_token(), deadline_s=0.3) as client:
        with pytest.raises(EdgeUnavailableError):
            client.predict(torch.zeros(1, 1, 28, 28))


def test_bundle_round_trips_through_tensor_only_files(chain, tmp_path):
    ctl, _, x = chain
    path = ctl.bundle.save(tmp_path / "b")
    loaded = ServingBundle.load(path)
    assert loaded.cuts == ctl.bundle.cuts and loaded.accuracy == ctl.bundle.accuracy
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ctl.bundle.model(x))
        assert torch.equal(loaded.exits[2](torch.ones(1, 32, 14, 14)), ctl.bundle.exits[2](torch.ones(1, 32, 14, 14)))
    good = (path / "bundle.json").read_text()
    info = json.loads(good)
    del info["exits"]
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"is not a serving bundle: .*lacks 'exits'"):
        ServingBundle.load(path)
    for broken in ("[1, 2]", json.dumps({**json.loads(good), "batch_size": [64]})):
        (path / "bundle.json").write_text(broken)
        with pytest.raises(ValueError, match="is not a serving bundle"):
            ServingBundle.load(path)
    (path / "bundle.json").write_text(good)
    (path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a serving bundle"):  # a readable error, not an unpickling trace
        ServingBundle.load(path)


@pytest.mark.parametrize(
    "bad",
    [
        {"heartbeat_s": 0},
        {"misses": 0},
        {"heartbeat_timeout_s": float("nan")},
        {"max_batch": -1},
        {"latency_trim": 0.5},
        {"token_ttl_s": 7200.0},
    ],
)
def test_a_controller_config_out_of_range_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ControllerConfig(**bad)
