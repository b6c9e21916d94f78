"""How long a round will take, predicted at its start from the plan and the emulated profiles.

The ServerApp logs a WARNING (:func:`edgeflower.progress.slow_round_warning`) when the slowest node's predicted
training time exceeds a few minutes, so a user learns at once that a configuration will run for hours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from edgeflower.app.client_app import node_device, node_link
from edgeflower.config import AppConfig
from edgeflower.models.profiler import ModelProfile
from edgeflower.planning.costmodel import CostModel, NodeState

__all__ = ["batches_per_round", "predict_round_s"]

TRAIN_SAMPLES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000}
"""Training samples of each dataset (the partition sizes follow from them)."""


def batches_per_round(cfg: AppConfig, num_partitions: int) -> int:
    """Batches a node trains per round: its (equal) share of the data, capped by ``max-batches``, per epoch."""
    samples = TRAIN_SAMPLES.get(cfg.dataset, 60_000) / max(1, num_partitions)
    per_epoch = math.ceil(samples / cfg.batch_size)
    if cfg.max_batches > 0:
        per_epoch = min(per_epoch, cfg.max_batches)
    return per_epoch * cfg.local_epochs


def predict_round_s(
    cfg: AppConfig, profile: ModelProfile, split_points: Mapping[int, int], server_round: int
) -> dict[str, float]:
    """Predicted training seconds of each partition this round (compute, link transfers; no Flower overhead).

    Parameters
    ----------
    cfg : AppConfig
        The run's configuration (device and link profiles, batch size, ``max-batches``).
    profile : ModelProfile
        The model's measured profile at ``cfg.batch_size``.
    split_points : mapping of int to int
        Partition id -> split point of this round's plan.
    server_round : int
        The round (link schedules change by round).
    """
    model = CostModel(profile, cfg.batch_size)
    batches = batches_per_round(cfg, len(split_points))
    out: dict[str, float] = {}
    for pid, k in sorted(split_points.items()):
        device, link = node_device(cfg, pid), node_link(cfg, pid, server_round)
        state = NodeState(
            slowdown=device.slowdown,
            uplink_mbps=link.uplink_mbps or math.inf,
            downlink_mbps=link.downlink_mbps or math.inf,
            latency_s=link.latency_ms / 1000,
        )
        per_batch = model.iteration_s(min(k, model.num_blocks), state)
        who = f"partition {pid}: {batches} batches x {per_batch:.2f} s at split {k}, device x{device.slowdown:g}"
        if k < model.num_blocks and (link.uplink_mbps or link.downlink_mbps):
            who += f", link {link.uplink_mbps:g}/{link.downlink_mbps:g} Mbit/s"
        out[who] = per_batch * batches
    return out
