"""The cost model: exact arithmetic, and a node state calibrated from reply metrics that predicts every split."""

from __future__ import annotations

import pytest
import torch

from edgeflower.models import build_model, profile_model
from edgeflower.planning import CostModel, NodeState, ObservationHistory

BATCH = 100


@pytest.fixture(scope="module")
def profile():
    torch.manual_seed(0)
    return profile_model(build_model("vgg5"), batch_size=BATCH)


def test_prediction_adds_compute_and_activation_bytes_over_bandwidth(profile):
    cost = CostModel(profile)
    node = NodeState(slowdown=3.0, uplink_mbps=10.0, downlink_mbps=20.0, server_scale=0.5, overhead_s=0.01)
    k = 4
    pred = cost.predict(k, node)
    head = sum(b.fwd_s + b.bwd_s for b in profile.blocks[:k])
    tail = sum(b.fwd_s + b.bwd_s for b in profile.blocks[k:])
    act = profile.blocks[k - 1].out_bytes * BATCH
    assert pred.device_s == pytest.approx(3.0 * head)
    assert pred.uplink_s == pytest.approx((act + 8 * BATCH) * 8 / 10e6)
    assert pred.downlink_s == pytest.approx(act * 8 / 20e6)
    assert pred.server_s == pytest.approx(0.5 * tail)
    assert pred.total_s == pytest.approx(pred.device_s + pred.uplink_s + pred.server_s + pred.downlink_s + 0.01)
    fl = cost.predict(cost.num_blocks, node)
    assert fl.total_s == pytest.approx(3.0 * (head + tail)) and fl.uplink_s == 0.0
    assert cost.predict(0, node).device_s == 0.0 and cost.predict(0, node).downlink_s == 0.0


def test_cost_model_needs_measured_times():
    with pytest.raises(ValueError, match="measure=True"):
        CostModel(profile_model(build_model("vgg5"), measure=False))


def test_a_node_measured_in_a_classic_and_a_split_round_predicts_every_split_point(profile):
    """Calibrate from the reply metrics of one classic-FL round and one split round of a known node (device 2x
    slower than the profile, edge server 1.5x, 100/50 Mbit/s, 5 ms per-batch overhead), recorded as that node
    would report them; the calibrated state then predicts the node's iteration time at every split point.

    How well the cost model predicts real rounds on this machine is a time, measured by the benchmarks
    (``pipeline``: ``prediction_error_selected``; ``fedadapt``), not asserted here."""
    cost = CostModel(profile)
    truth = NodeState(slowdown=2.0, uplink_mbps=100.0, downlink_mbps=50.0, server_scale=1.5, overhead_s=0.005)
    batches = 4

    def reply(k: int) -> dict[str, float]:
        p = cost.predict(k, truth)
        metrics = {"train-time-s": p.total_s * batches, "device-s": p.device_s * batches, "split-point": k}
        metrics |= {"num-examples": batches * BATCH, "batches": batches}
        if k < cost.num_blocks:
            metrics |= {"uplink-s": p.uplink_s * batches, "server-s": p.server_s * batches}
            metrics |= {"downlink-s": p.downlink_s * batches}
        return metrics

    history = ObservationHistory(cost)
    history.add(1, 1, reply(cost.num_blocks))
    history.add(2, 1, reply(4))
    state = history.state(1)
    assert state is not None
    assert state.slowdown == pytest.approx(2.0) and state.server_scale == pytest.approx(1.5)
    assert (state.uplink_mbps, state.downlink_mbps) == pytest.approx((100.0, 50.0))
    for k in range(cost.num_blocks + 1):
        assert cost.iteration_s(k, state) == pytest.approx(cost.iteration_s(k, truth), rel=1e-6), k
