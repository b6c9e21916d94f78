"""Which offload failures fall back to local training and which fail the node (issue 16): transient faults of the
edge server fall back unless ``fallback = "never"``; permanent errors fail with the edge server's message."""

from __future__ import annotations

import pytest
import torch

from edgeflower.data import BatchLoader
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.split import OffloadError, SplitTrainer, fallback_cause, is_transient
from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.models import build_model
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.errors import (
    EdgeAuthError,
    EdgeOverloadedError,
    EdgeServerError,
    EdgeTimeoutError,
    EdgeUnavailableError,
    InvalidMessageError,
    MessageTooLargeError,
    SessionNotFoundError,
    SessionStateError,
)

SECRET = b"offload-failures-test-secret-0123456789"
OPT = OptimizerSettings(lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def batches(fmnist_train):
    return list(BatchLoader(fmnist_train.subset(range(32)), 16, seed=1).batches(0))


def _model():
    torch.manual_seed(0)
    return build_model("vgg5", width=0.25)


@pytest.mark.parametrize(
    ("error", "transient", "cause"),
    [
        (EdgeUnavailableError("connection refused"), True, "unreachable"),
        (EdgeTimeoutError("no step result within 120 s"), True, "timed out"),
        (EdgeOverloadedError("too many sessions"), True, "overloaded"),
        (InvalidMessageError("cannot build model 'mycnn': unknown model"), False, ""),
        (MessageTooLargeError("'open' message is 76148316 bytes, larger than the limit of 67108864 bytes"), False, ""),
        (EdgeAuthError("token expired"), False, ""),
        (SessionNotFoundError("session 1a2b was closed or expired"), True, "session lost"),
        (SessionStateError("out of order"), False, ""),
        (EdgeServerError("boom"), False, ""),
    ],
)
def test_only_an_unreachable_slow_busy_or_forgetful_edge_server_is_transient(error, transient, cause):
    assert is_transient(error) is transient
    if transient:
        assert fallback_cause(error) == cause


def test_a_permanent_error_fails_the_node_with_the_edge_servers_message(batches):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def unknown_model(k, tail, opt):
        raise InvalidMessageError("cannot build model 'mycnn': unknown model 'mycnn'", address="127.0.0.1:5")

    with pytest.raises(OffloadError, match=r"split training failed: edge server 127\.0\.0\.1:5: .*unknown model"):
        SplitTrainer(model, 3, OPT).train(batches, unknown_model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained in secret


@pytest.mark.parametrize("trainer", [SplitTrainer, PipelineTrainer])
def test_fallback_never_fails_the_node_when_the_edge_server_is_unreachable(batches, trainer):
    def unreachable(k, tail, opt):
        raise EdgeUnavailableError("connection refused", address="127.0.0.1:6")

    args = (2,) if trainer is PipelineTrainer else ()
    with pytest.raises(OffloadError, match=r"fallback = 'never': no local training\): edge server 127\.0\.0\.1:6"):
        trainer(_model(), 3, OPT, *args, fallback="never").train(batches, unreachable)
    result = trainer(_model(), 3, OPT, *args).train(batches, unreachable)  # the default falls back
    assert result.fell_back and result.fallback_cause == "unreachable" and result.num_examples == 32


def test_a_message_over_the_edge_servers_limit_fails_naming_the_option(batches):
    model = _model()
    tail_bytes = sum(t.numel() * t.element_size() for t in model.split(0)[1].state_dict().values())
    small = EdgeServerConfig(max_message_bytes=tail_bytes // 2)  # the edge server refuses the whole-model tail
    with EdgeServer(secret=SECRET, config=small) as server, EdgeClient(server.address) as client:
        token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)
        trainer = SplitTrainer(model, 0, OPT)
        with pytest.raises(OffloadError, match=r"larger than.*raise the run-config option max-message-mb"):
            trainer.train(batches, lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt))
    with pytest.raises(ValueError, match="fallback"):
        SplitTrainer(model, 3, OPT, fallback="sometimes")
