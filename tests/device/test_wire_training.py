"""Split and pipelined training with a compressed wire format (``wire-dtype``): close to float32, fewer bytes."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from edgeflower.data import BatchLoader
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.split import OffloadError, SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.training import make_optimizer
from edgeflower.transport import EdgeClient, InvalidMessageError, OptimizerSettings, TokenIssuer
from edgeflower.transport.wire import wire_roundtrip

SECRET = b"wire-training-test-secret-0123456789"
OPT = OptimizerSettings(lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def edge():
    with EdgeServer(secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def batches(fmnist_train):
    return list(BatchLoader(fmnist_train.subset(range(64)), 16, seed=5).batches(0))


def _train(edge, model, batches, wire: str, m: int = 1, node: int = 1):
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=node, server_round=1)
    with EdgeClient(edge.address, wire_dtype=wire) as client:
        trainer = PipelineTrainer(model, 3, OPT, m)
        result = trainer.train(batches, lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt))
    assert not result.fell_back, result.fallback_reason
    return result


def _relative_diff(a, b, start) -> float:
    """Distance between the trained states ``a`` and ``b`` over the size of ``b``'s update from ``start``."""
    sa, sb, s0 = a.state_dict(), b.state_dict(), start.state_dict()
    keys = [k for k in sa if sa[k].is_floating_point()]
    num = sum(float((sa[k].double() - sb[k].double()).norm() ** 2) for k in keys)
    den = sum(float((sb[k].double() - s0[k].double()).norm() ** 2) for k in keys)
    return (num / den) ** 0.5


def test_a_bfloat16_split_round_stays_close_to_float32_and_halves_the_traffic(edge, batches):
    torch.manual_seed(0)
    initial = build_model("vgg5")
    exact, half = copy.deepcopy(initial), copy.deepcopy(initial)
    r32 = _train(edge, exact, batches, "float32")
    r16 = _train(edge, half, batches, "bfloat16", node=2)
    # the update differs from the float32 one by a small fraction of its own size
    assert _relative_diff(half, exact, initial) < 0.05
    assert abs(r16.loss - r32.loss) < 0.02 * r32.loss
    labels = 64 * 8
    assert r16.traffic["uplink-bytes"] - labels == (r32.traffic["uplink-bytes"] - labels) // 2
    assert r16.traffic["downlink-bytes"] == r32.traffic["downlink-bytes"] // 2


@pytest.mark.parametrize("wire", ["int8", "int8-channel"])
def test_pipelined_rounds_train_with_8_bit_activations_and_gradients(edge, batches, wire):
    torch.manual_seed(0)
    initial = build_model("vgg5", norm="group")
    exact, quant = copy.deepcopy(initial), copy.deepcopy(initial)
    r32 = _train(edge, exact, batches, "float32", m=2, node=3)
    r8 = _train(edge, quant, batches, wire, m=2, node=4)
    assert abs(r8.loss - r32.loss) < 0.05 * r32.loss
    assert r8.traffic["downlink-bytes"] < r32.traffic["downlink-bytes"] / 3.9
    assert r8.traffic["uplink-bytes"] < r32.traffic["uplink-bytes"] / 3.5  # labels travel as int64


def _pipe_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("edgeflower-pipe")}


def test_the_pipeline_threads_live_for_a_pass_and_end_with_it(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group")
    seen: list[set[str]] = []

    def watched():  # records the live pipeline threads as the round draws its batches
        for batch in batches:
            seen.append(_pipe_threads())
            yield batch

    _train(edge, model, watched(), "int8", m=4, node=5)
    assert seen[0] == set()  # started by the first pipelined batch
    assert all(names == {"edgeflower-pipe-send", "edgeflower-pipe-recv"} for names in seen[1:])  # one pair
    assert not _pipe_threads()


def test_a_step_in_another_format_than_the_session_was_opened_with_is_refused(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5")
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=6, server_round=1)
    with EdgeClient(edge.address) as client:
        opener = lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt, wire_dtype="int8")  # noqa: E731
        head, tail = model.split(3)
        session = opener(3, tail.state_dict(), OPT)
        assert session.wire_dtype == "int8"
        session.wire_dtype = "bfloat16"  # a device that does not keep to its word
        x, y = batches[0]
        with pytest.raises(InvalidMessageError, match="opened with wire dtype int8"):
            session.step(head(x).detach(), y, batch=0)
        session.abort()


def test_a_permanent_wire_error_fails_the_round_instead_of_falling_back(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5")
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=7, server_round=1)

    def opener(k, tail, opt):
        session = client.open_session(token, model.spec, k, tail, opt, wire_dtype="float16")
        session.wire_dtype = "int8"
        return session

    with EdgeClient(edge.address) as client, pytest.raises(OffloadError, match="wire dtype float16"):
        SplitTrainer(model, 3, OPT).train(batches, opener)


def test_a_fallback_replays_the_tail_from_what_the_edge_server_decoded(batches):
    """With int8 on the wire the edge server trains on dequantised activations; after it stops mid-round the device
    rebuilds that very tail (its replay log holds what the server decoded), then finishes locally in float32."""
    torch.manual_seed(0)
    initial = build_model("vgg5")
    k, stop_at = 3, 2
    reference = copy.deepcopy(initial)
    head, tail = reference.split(k, share=True)
    opts = [make_optimizer(side.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay) for side in (head, tail)]
    for i, (x, y) in enumerate(batches):
        for opt in opts:
            opt.zero_grad()
        if i < stop_at:  # split, as the edge server computes it from the int8 frames
            act = head(x)
            received = wire_roundtrip(act.detach(), "int8").requires_grad_(True)
            torch.nn.functional.cross_entropy(tail(received), y).backward()
            act.backward(wire_roundtrip(received.grad, "int8"))
        else:
            torch.nn.functional.cross_entropy(tail(head(x)), y).backward()
        for opt in opts:
            opt.step()

    server = EdgeServer(secret=SECRET).__enter__()
    try:

        def stream():
            for i, batch in enumerate(batches):
                if i == stop_at:
                    server.stop(grace_s=0)  # the edge server goes away between two batches
                yield batch

        model = copy.deepcopy(initial)
        result = _fallback_run(server, model, stream())
    finally:
        server.stop(grace_s=0)
    assert result.fell_back and result.fallback_batch == stop_at and result.replayed_batches == stop_at
    sm, sr = model.state_dict(), reference.state_dict()
    assert max((sm[key].double() - sr[key].double()).abs().max().item() for key in sm) <= 1e-5


def _fallback_run(server, model, batches):
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=8, server_round=1)
    with EdgeClient(server.address, wire_dtype="int8") as client:
        trainer = SplitTrainer(model, 3, OPT)
        return trainer.train(batches, lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt))
