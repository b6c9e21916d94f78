"""Pipelined split training (PiPar): same weights as sequential, real overlap, many devices, clean disconnects."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from edgeflower.data import BatchLoader
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.split import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.training import make_optimizer
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, LinkProfile

SECRET = b"pipeline-training-test-secret-0123456789"
OPT = OptimizerSettings(lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def edge():
    with EdgeServer(secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def batches(fmnist_train):
    return list(BatchLoader(fmnist_train.subset(range(96)), 32, seed=5).batches(0))


def _opener(client: EdgeClient, model, node: int = 1):
    token = TokenIssuer(SECRET).issue(run_id=2, node_id=node, server_round=1)
    return lambda k, tail, opt: client.open_session(token, model.spec, k, tail, opt)


def _local_accumulating(model, batches, m: int):
    """Local training of the whole model, accumulating each batch's gradient over ``m`` micro-batches."""
    opt = make_optimizer(model.parameters(), OPT.lr, OPT.momentum)
    for x, y in batches:
        opt.zero_grad()
        for xm, ym in zip(x.tensor_split(m), y.tensor_split(m), strict=True):
            (torch.nn.functional.cross_entropy(model(xm), ym) * len(ym) / len(y)).backward()
        opt.step()
    return model


def _max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.mark.parametrize(
    ("name", "k"),
    [("vgg5", k) for k in range(7)] + [("resnet18", k) for k in (2, 5, 9)] + [("mobilenetv2", 4)],
)
def test_split_equals_local_training_and_pipelined_equals_local_accumulation_with_groupnorm(edge, batches, name, k):
    """Split training is local training of the whole model (the same operations in the same order), and pipelined
    training is local training that accumulates each batch's gradient over its micro-batches: both to 1e-5.

    The two references differ from each other only by float reordering (convolutions over micro-batches of 8
    instead of batches of 32), so sequential and pipelined are held to that noise. It is small on most CPUs, but not
    on all: with one thread on an AVX-512 AMD EPYC, ResNet-18 (width 8) differs by 7e-4 after three batches, and
    MobileNetV2 on 28x28 inputs ends in 1x1 feature maps, where GroupNorm is ill-conditioned in float32 (~4e-4
    anywhere; 2e-16 in float64)."""
    torch.manual_seed(0)
    options = {"resnet18": {"width": 8}, "mobilenetv2": {"width": 0.25}}.get(name, {})
    initial = build_model(name, norm="group", **options)
    local = {m: _local_accumulating(copy.deepcopy(initial), batches, m) for m in (1, 4)}
    sequential, pipelined = copy.deepcopy(initial), copy.deepcopy(initial)
    with EdgeClient(edge.address) as client:
        SplitTrainer(sequential, k, OPT).train(batches, _opener(client, sequential))
        result = PipelineTrainer(pipelined, k, OPT, micro_batches=4).train(batches, _opener(client, pipelined))
    assert not result.fell_back and result.traffic["micro-batches"] == 4
    assert _max_diff(sequential, local[1]) <= 1e-5
    assert _max_diff(pipelined, local[4]) <= 1e-5
    assert _max_diff(sequential, pipelined) <= 1e-5 + 2 * _max_diff(local[1], local[4])
    assert _max_diff(initial, pipelined) > 1e-3


def test_pipelined_batchnorm_equals_local_gradient_accumulation_over_micro_batches(edge, batches):
    """Documented behaviour: BatchNorm statistics are per micro-batch, as in PiPar."""
    torch.manual_seed(0)
    initial = build_model("vgg5", norm="batch")
    reference = _local_accumulating(copy.deepcopy(initial), batches, 4)
    pipelined = copy.deepcopy(initial)
    with EdgeClient(edge.address) as client:
        PipelineTrainer(pipelined, 3, OPT, micro_batches=4).train(batches, _opener(client, pipelined))
    assert _max_diff(reference, pipelined) <= 1e-5
    full_batch = copy.deepcopy(initial)
    with EdgeClient(edge.address) as client:
        SplitTrainer(full_batch, 3, OPT).train(batches, _opener(client, full_batch))
    assert _max_diff(full_batch, pipelined) > 1e-4  # and it is not the full-batch BatchNorm update


def test_device_compute_and_uplink_really_overlap(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group")
    # a micro-batch's activation (~400 kB) takes ~8 ms at 400 Mbit/s, about one (3x slowed) head forward: every
    # stage has work while the others do
    link = EmulatedLink(LinkProfile(uplink_mbps=400, downlink_mbps=400, latency_ms=2))
    with EdgeClient(edge.address) as client:
        trainer = PipelineTrainer(model, 3, OPT, micro_batches=4, device=DeviceProfile(3.0), link=link)
        result = trainer.train(batches, _opener(client, model))
    ivs = result.timeline.intervals
    fwd = [iv for iv in ivs if iv.phase == "device" and iv.what == "fwd"]
    up = [iv for iv in ivs if iv.phase == "uplink"]
    overlaps = [(f, u) for f in fwd for u in up if f.start < u.end and u.start < f.end]
    assert overlaps, "no device forward ran while an activation was on the uplink"
    server = [iv for iv in ivs if iv.phase == "server"]
    device = [iv for iv in ivs if iv.phase == "device"]
    assert any(s.start < d.end and d.start < s.end for s in server for d in device)  # server busy during device work
    totals = result.timeline.totals()
    assert totals["span-s"] < totals["device-s"] + totals["uplink-s"] + totals["server-s"] + totals["downlink-s"]
    assert 0 < totals["uplink-utilisation"] <= 1 and 0 < totals["downlink-utilisation"] <= 1


def test_several_devices_pipeline_against_one_edge_server_at_once(edge, batches):
    torch.manual_seed(0)
    initial = build_model("vgg5", norm="group")
    expected = copy.deepcopy(initial)
    with EdgeClient(edge.address) as client:
        SplitTrainer(expected, 2, OPT).train(batches, _opener(client, expected))
    models = [copy.deepcopy(initial) for _ in range(3)]
    errors: list[BaseException] = []

    def device(i: int) -> None:
        try:
            with EdgeClient(edge.address) as client:
                link = EmulatedLink(LinkProfile(200, 200, 1))
                PipelineTrainer(models[i], 2, OPT, micro_batches=4, link=link).train(
                    batches, _opener(client, models[i], node=10 + i)
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for model in models:
        assert _max_diff(expected, model) <= 1e-5
    assert edge.num_sessions == 0


def test_client_disconnect_mid_pipeline_leaves_edge_server_healthy(edge, batches):
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group")
    client = EdgeClient(edge.address)
    session = _opener(client, model, node=99)(3, model.split(3)[1].state_dict(), OPT)
    head = model.split(3)[0]
    x, y = batches[0]
    for j, (xm, ym) in enumerate(zip(x.tensor_split(4), y.tensor_split(4), strict=True)):
        if j == 2:
            break
        session.send(head(xm).detach(), ym, batch=0, micro=j, num_micro=4, batch_size=len(y))
    client.close()  # the device vanishes with micro-batches in flight
    deadline = 50
    while edge.num_sessions and deadline:
        threading.Event().wait(0.1)
        deadline -= 1
    assert edge.num_sessions == 0
    with EdgeClient(edge.address) as again:
        assert again.health().status == "serving"
        fresh = copy.deepcopy(model)
        result = PipelineTrainer(fresh, 3, OPT, micro_batches=4).train(batches, _opener(again, fresh, node=98))
    assert not result.fell_back


def test_micro_batch_count_must_be_positive():
    with pytest.raises(ValueError, match="micro_batches"):
        PipelineTrainer(build_model("vgg5"), 3, OPT, micro_batches=0)
