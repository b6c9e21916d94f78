"""Split training through the real offload channel: equivalence with local training, timeline, and fallback."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeflower.data import BatchLoader
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.split import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.emulation import EmulatedLink, LinkProfile
from edgeflower.transport.errors import EdgeUnavailableError
from tests._edge_helpers import EdgeProcess, wait_until

SECRET = b"split-training-test-secret-0123456789"
OPT = OptimizerSettings(lr=0.05, momentum=0.9, weight_decay=1e-4)


@pytest.fixture(scope="module")
def edge():
    with EdgeServer(secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def batches(fmnist_train):
    data = fmnist_train.subset(range(64))
    return list(BatchLoader(data, 16, seed=3).batches(0))


def _opener(client: EdgeClient, model, node: int = 1):
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=node, server_round=1)
    return lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt)


def _local(model, batches):
    train_local(model, batches, make_optimizer(model.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay))


def _max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.mark.parametrize(("name", "options"), [("vgg5", {}), ("resnet18", {"width": 8})])
def test_split_training_over_grpc_equals_local_training_at_every_split_point(edge, batches, name, options):
    torch.manual_seed(0)
    initial = build_model(name, **options)
    reference = copy.deepcopy(initial)
    _local(reference, batches)
    with EdgeClient(edge.address) as client:
        for k in range(initial.num_blocks):
            model = copy.deepcopy(initial)
            result = SplitTrainer(model, k, OPT).train(batches, _opener(client, model))
            assert not result.fell_back
            assert result.num_examples == 64
            assert _max_diff(model, reference) <= 1e-5, k


def test_timeline_records_every_phase_in_data_flow_order(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5")
    link = EmulatedLink(LinkProfile(uplink_mbps=40, downlink_mbps=40, latency_ms=2))
    with EdgeClient(edge.address) as client:
        result = SplitTrainer(model, 3, OPT, link=link).train(batches, _opener(client, model))
    by_batch: dict[int, dict[str, list]] = {}
    for iv in result.timeline.intervals:
        by_batch.setdefault(iv.batch, {}).setdefault(iv.phase, []).append(iv)
    assert sorted(by_batch) == [0, 1, 2, 3]
    for phases in by_batch.values():
        fwd, bwd = sorted(phases["device"], key=lambda iv: iv.start)
        (up,), (srv,), (down,) = phases["uplink"], phases["server"], phases["downlink"]
        assert fwd.end <= up.start + 1e-6 and up.end <= srv.start + 1e-6
        assert srv.end <= down.start + 1e-6 and down.end <= bwd.start + 1e-6
    act_bytes = 16 * 64 * 14 * 14 * 4 + 16 * 8  # conv2 output of 16 samples + int64 labels
    metrics = result.metrics()
    assert metrics["uplink-s"] == pytest.approx(4 * (act_bytes * 8 / 40e6 + 0.002), rel=0.15)
    assert metrics["server-s"] > 0 and metrics["server-idle-s"] > 0
    assert 0 < metrics["uplink-utilisation"] <= 1 and 0 < metrics["downlink-utilisation"] <= 1
    assert metrics["fell-back"] == 0 and metrics["num-examples"] == 64


@pytest.mark.parametrize(
    ("norm", "m", "replay_mb"),
    [("batch", 1, 256.0), ("group", 4, 256.0), ("batch", 1, 0.0)],
    ids=["split", "pipeline", "no-replay-log"],
)
def test_killed_edge_server_process_mid_round_falls_back_and_keeps_progress(tmp_path, batches, norm, m, replay_mb):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    torch.manual_seed(0)
    initial = build_model("vgg5", norm=norm)
    k, kill_at = 3, 2

    # What must come out: with the replay log, exactly local training of the whole model (the device rebuilds the
    # dead edge server's tail); without it, batches [0, kill_at) split, then the tail restarts from the round-start
    # weights with a fresh optimizer while the head keeps its weights and momentum.
    reference = copy.deepcopy(initial)
    head, tail = reference.split(k, share=True)
    head_opt = make_optimizer(head.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay)
    tail_opt = make_optimizer(tail.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches):
        if i == kill_at and replay_mb == 0:
            tail.load_state_dict(initial.split(k)[1].state_dict())
            tail_opt = make_optimizer(tail.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay)
        head_opt.zero_grad()
        tail_opt.zero_grad()
        loss_fn(tail(head(x)), y).backward()
        head_opt.step()
        tail_opt.step()

    with EdgeProcess(secret_file) as proc:

        def stream():
            for i, batch in enumerate(batches):
                if i == kill_at:
                    proc.kill()  # SIGKILL the edge server process between two batches
                yield batch

        model = copy.deepcopy(initial)
        # a generous deadline: the killed process refuses at once, while a live one on a busy machine may be slow
        with EdgeClient(proc.address, timeout_s=300) as client:
            trainer = PipelineTrainer(model, k, OPT, m, replay_limit_mb=replay_mb)
            result = trainer.train(stream(), _opener(client, model))
    assert result.fell_back and result.fallback_batch == kill_at
    assert "Unavailable" in result.fallback_reason
    assert result.num_examples == 64
    assert result.replayed_batches == (kill_at if replay_mb else 0)
    assert result.metrics()["fallback-replayed-batches"] == result.replayed_batches
    assert _max_diff(model, reference) <= 1e-5
    assert _max_diff(model, initial) > 1e-3  # progress was made and kept


class _LosesReplyAt:
    """A session whose edge server steps batch ``at`` and then dies before the reply reaches the device."""

    def __init__(self, session, at: int) -> None:
        self._session, self.at = session, at

    def step(self, act, labels, batch: int, batch_size: int | None = None):
        result = self._session.step(act, labels, batch=batch, batch_size=batch_size)
        if batch == self.at:
            raise EdgeUnavailableError("connection lost after the server stepped")
        return result

    def __getattr__(self, name: str):
        return getattr(self._session, name)


@pytest.fixture(scope="module")
def vgg5_and_local(batches):
    """A fresh VGG5 and its copy trained locally on ``batches`` (the reference of every fallback)."""
    torch.manual_seed(0)
    initial = build_model("vgg5")
    reference = copy.deepcopy(initial)
    _local(reference, batches)
    return initial, reference


@pytest.mark.parametrize("at", [0, 2])
def test_a_batch_the_server_stepped_but_never_answered_is_redone_locally_not_replayed(
    edge, batches, vgg5_and_local, at
):
    initial, reference = vgg5_and_local
    model = copy.deepcopy(initial)
    with EdgeClient(edge.address) as client:
        opener = _opener(client, model, node=40 + at)
        result = SplitTrainer(model, 3, OPT).train(batches, lambda k, t, o: _LosesReplyAt(opener(k, t, o), at))
    assert result.fell_back and result.fallback_batch == at and result.replayed_batches == at
    assert _max_diff(model, reference) <= 1e-5  # the lost step is not counted twice, nothing is missing
    assert wait_until(lambda: edge.num_sessions == 0)


@pytest.mark.parametrize(("m", "at"), [(1, 2), (2, 2), (1, 4)])  # at 4: lost after the last step, before Close
def test_a_session_the_edge_server_lost_mid_round_falls_back_and_ends_with_the_same_model(batches, m, at):
    """An edge server that restarted or reaped the session answers NOT_FOUND: a transient fault (``session lost``),
    so the device replays the tail it had and finishes locally, as after a killed edge server: the round ends with
    the model of the same round without the loss (GroupNorm when pipelined: the local rest of the round trains
    whole batches, as in the killed-process test)."""
    torch.manual_seed(0)
    initial = build_model("vgg5", norm="batch" if m == 1 else "group")
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address) as client:
        unharmed = copy.deepcopy(initial)
        assert not PipelineTrainer(unharmed, 3, OPT, m).train(batches, _opener(client, unharmed)).fell_back

        def stream():
            for i, batch in enumerate(batches):
                if i == at:
                    assert all(server.registry.drop(sid, "reaped for the test") for sid in server.registry.ids())
                yield batch
            if at == len(batches):
                assert all(server.registry.drop(sid, "reaped for the test") for sid in server.registry.ids())

        model = copy.deepcopy(initial)
        result = PipelineTrainer(model, 3, OPT, m).train(stream(), _opener(client, model, node=2))
    assert result.fell_back and result.fallback_cause == "session lost"
    assert result.fallback_batch == at and result.replayed_batches == at
    assert result.num_examples == 64
    assert _max_diff(model, unharmed) <= 1e-5  # the lost tail was rebuilt, nothing trained twice or missed
    assert _max_diff(model, initial) > 1e-3


def test_open_failure_falls_back_from_the_first_batch(batches, vgg5_and_local):
    initial, reference = vgg5_and_local

    def refuse(k, tail, opt):
        raise EdgeUnavailableError("no edge server")

    model = copy.deepcopy(initial)
    result = SplitTrainer(model, 3, OPT).train(batches, refuse)
    assert result.fell_back and result.fallback_batch == 0 and result.replayed_batches == 0
    assert _max_diff(model, reference) <= 1e-5


def test_all_blocks_on_the_device_is_not_a_split():
    model = build_model("vgg5")
    with pytest.raises(ValueError, match="nothing to offload"):
        SplitTrainer(model, model.num_blocks, OPT)
