"""Shared by the split-training benchmarks: run one device's split/pipelined/local pass under emulation."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models.splittable import SplittableModel
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, LinkProfile

SECRET = b"edgeflower-benchmark-secret-0123456789"
OPT = OptimizerSettings(lr=0.01, momentum=0.9)

__all__ = ["OPT", "SECRET", "Measured", "edge_server", "run_local", "run_split"]


@dataclass
class Measured:
    """One measured pass: wall seconds (the round: session open and tail fetch included), per-batch seconds (the
    span of the batches' phases over their number: steady-state iteration time) and the timeline totals."""

    seconds: float
    per_batch_s: float
    totals: dict[str, float]
    batches: int


def edge_server() -> EdgeServer:
    """An in-process edge server for the benchmark (use as a context manager)."""
    return EdgeServer(secret=SECRET)


def run_split(
    server: EdgeServer,
    model: SplittableModel,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    k: int,
    m: int = 1,
    slowdown: float = 1.0,
    link: LinkProfile | None = None,
    node: int = 1,
    wire: str = "float32",
) -> Measured:
    """Split (m = 1) or pipelined (m > 1) training of a copy of ``model`` over ``batches``, activations and
    gradients travelling as ``wire`` (:mod:`edgeflower.transport.wire`)."""
    work = copy.deepcopy(model)
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=node, server_round=1)
    trainer = PipelineTrainer(work, k, OPT, m, DeviceProfile(slowdown), EmulatedLink(link or LinkProfile()))
    with EdgeClient(server.address, wire_dtype=wire) as client:
        result = trainer.train(batches, lambda kk, tail, opt: client.open_session(token, work.spec, kk, tail, opt))
    if result.fell_back:
        raise RuntimeError(f"benchmark run fell back: {result.fallback_reason}")
    totals = result.timeline.totals()
    return Measured(result.seconds, totals["span-s"] / len(batches), totals, len(batches))


def run_local(
    model: SplittableModel, batches: list[tuple[torch.Tensor, torch.Tensor]], slowdown: float = 1.0
) -> Measured:
    """Classic FL on the device: local training of a copy of ``model`` with the device's slow-down."""
    work = copy.deepcopy(model)
    res = train_local(work, batches, make_optimizer(work.parameters(), OPT.lr, OPT.momentum), slowdown=slowdown)
    return Measured(
        res.seconds, res.seconds / len(batches), {"device-s": res.seconds, "span-s": res.seconds}, len(batches)
    )
