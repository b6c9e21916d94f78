"""A deterministic profile for planning tests: block times proportional to FLOPs (no timing noise)."""

from __future__ import annotations

from dataclasses import replace

from edgeflower.models import build_model, profile_model
from edgeflower.models.profiler import ModelProfile
from edgeflower.planning import split_points

FLOPS_PER_S = 50e9


def flop_profile(name: str = "vgg5", batch_size: int = 100) -> ModelProfile:
    """``profile_model`` without measuring; forward time = FLOPs / 50 GFLOP/s, backward twice that (+ 1 ms/block)."""
    prof = profile_model(build_model(name), batch_size=batch_size, measure=False)
    blocks = tuple(
        replace(b, fwd_s=b.flops * batch_size / FLOPS_PER_S + 5e-4, bwd_s=2 * b.flops * batch_size / FLOPS_PER_S + 5e-4)
        for b in prof.blocks
    )
    return replace(prof, blocks=blocks)


def simulate_rounds(
    planner,
    cost,
    devices_at,
    rounds: int = 10,
    batches: int = 6,
    noise: float = 0.1,
    spike_prob: float = 0.1,
    seed: int = 0,
):
    """Deploy ``planner`` on a simulated testbed; return ``(round_times, plans)``.

    ``devices_at(server_round)`` gives the true :class:`NodeState` of every node (dict node -> state). Each node's
    reply metrics are the cost model's per-phase times of its planned split, with log-normal measurement noise and
    occasional contention spikes (what a shared machine does to measured times), plus the reported bandwidth.
    """
    import math

    import numpy as np

    rng = np.random.default_rng(seed)
    times, plans = [], []
    for rnd in range(1, rounds + 1):
        states = devices_at(rnd)
        plan = split_points(planner.plan(rnd, sorted(states)))
        replies, true_round = {}, 0.0
        for n, st in states.items():
            k = plan[n]
            pred = cost.predict(k, st)
            f = math.exp(rng.normal(0.0, noise)) * (rng.uniform(1.3, 2.5) if rng.random() < spike_prob else 1.0)
            true_round = max(true_round, pred.total_s * batches)
            replies[n] = {
                "train-time-s": pred.total_s * batches * f,
                "device-s": pred.device_s * batches * f,
                "uplink-s": pred.uplink_s * batches,
                "server-s": pred.server_s * batches * f,
                "downlink-s": pred.downlink_s * batches,
                "num-examples": 100 * batches,
                "batches": batches,
                "split-point": k,
                "uplink-mbps": st.uplink_mbps,
                "downlink-mbps": st.downlink_mbps,
            }
        planner.observe(rnd, replies)
        times.append(true_round)
        plans.append(dict(plan))
    return times, plans
