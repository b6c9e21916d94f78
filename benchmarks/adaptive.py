"""Benchmark ``adaptive``: re-partitioning a device/edge split when bandwidth or CPU load changes (McNamee et al.).

Sensitivity study: the latency of every cut of VGG5 (batch 8, Fashion-MNIST shape) measured under emulated link
bandwidths and CPU loads on the device and the edge (compute stretched by ``1 / (1 - load)``, transfers as real
sleeps; the device is 4x slower than the edge), next to the cut model's estimate. Re-partitioning: an
:class:`~edgeflower.serving.adaptive.AdaptiveSplitServing` device serves through a real inference node; the
bandwidth changes; the device observes it, re-plans and redeploys the tail. Its steady-state latency is compared
with a device that keeps the cut planned for the old bandwidth, and its cut with the brute-force best cut.

Figures: ``repartition_gain_ratio`` (geometric mean over the bandwidth changes of fixed-cut latency / re-planned
latency after the change; > 1 means re-planning pays), ``replan_matches_brute_force`` (fraction of changes where
the re-planned cut is the brute-force measured best), ``best_cut_changes_bandwidth`` / ``best_cut_changes_load``
(how often the measured best cut differs between neighbouring bandwidths at a fixed load, and between loads at a
fixed bandwidth: the paper's "network conditions matter more than CPU load"), ``cut_estimation_error`` (median
relative error of the cut model, %).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.models.zoo import build_model
from edgeflower.serving import AdaptiveSplitServing, Conditions, CutModel, InferenceNode, NodeClient
from edgeflower.serving.adaptive import brute_force_cut, measure_cut, sensitivity_study
from edgeflower.transport.auth import RenewingToken, TokenIssuer
from edgeflower.transport.emulation import DeviceProfile, LinkProfile

NAME = "adaptive"
SECRET = b"edgeflower-adaptive-benchmark-secret"
DEVICE = 4.0

FULL = {
    "batch_size": 8,
    "bandwidths": [5, 10, 20, 50, 100, 1000],
    "loads": [0.0, 0.5, 0.8],
    "repeats": 3,
    "changes": [(1000, 2), (1000, 5), (1000, 10), (100, 2), (2, 1000), (5, 100)],
    "requests": 16,
}
QUICK = {**FULL, "bandwidths": [100, 1000], "loads": [0.0, 0.5], "repeats": 1, "changes": [(1000, 2)], "requests": 3}


def _conditions(cfg: dict[str, Any]) -> list[Conditions]:
    out = []
    for bw, dl, el in itertools.product(cfg["bandwidths"], cfg["loads"], cfg["loads"]):
        if dl and el:
            continue  # one side loaded at a time keeps the grid small
        out.append(Conditions(bandwidth_mbps=bw, device_slowdown=DEVICE, device_load=dl, edge_load=el))
    return out


def _served_latency(serving: AdaptiveSplitServing, x: torch.Tensor, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        serving.infer(x, f"r{i}")
        times.append(time.perf_counter() - t0)
    return times


def _change(model, cm: CutModel, before: float, after: float, cfg: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    x = torch.randn(cfg["batch_size"], *model.spec.in_shape)
    token = RenewingToken(lambda ttl: TokenIssuer(SECRET).issue(0, 0, 0, ttl_s=ttl, role="controller"))
    old, new = (Conditions(bandwidth_mbps=b, device_slowdown=DEVICE) for b in (before, after))
    row: dict[str, Any] = {"from_mbps": before, "to_mbps": after}
    with InferenceNode(secret=SECRET) as n_fixed, InferenceNode(secret=SECRET) as n_adapt:
        fixed_client = NodeClient(n_fixed.address, token, LinkProfile(before, before))
        adapt_client = NodeClient(n_adapt.address, token, LinkProfile(before, before))
        try:
            fixed = AdaptiveSplitServing(model, fixed_client, cm, old, DeviceProfile(DEVICE), observe=())
            adapt = AdaptiveSplitServing(model, adapt_client, cm, old, DeviceProfile(DEVICE), observe=("bandwidth",))
            for s in (fixed, adapt):
                _served_latency(s, x, 3)
            row["cut_before"] = adapt.cut
            for c in (fixed_client, adapt_client):
                c.link.set_profile(LinkProfile(after, after))
            transition = _served_latency(adapt, x, cfg["requests"])
            row["cut_after"] = adapt.cut
            row["replans"] = adapt.planner.replans
            row["adaptive_ms"] = min(_served_latency(adapt, x, cfg["requests"])) * 1e3
            row["fixed_ms"] = min(_served_latency(fixed, x, cfg["requests"])) * 1e3
            row["transition_mean_ms"] = statistics.fmean(transition) * 1e3
        finally:
            fixed_client.close()
            adapt_client.close()
    best, measured = brute_force_cut(model, new, x, cfg["repeats"])
    row["brute_force_cut"] = best
    replanned = measured[row["cut_after"]]
    if replanned is None:  # pruned by the brute force: its transfer alone is slower than the best cut
        replanned = measure_cut(model, row["cut_after"], new, x, cfg["repeats"])
    row["measured_replanned_ms"] = replanned * 1e3
    row["measured_best_ms"] = measured[best] * 1e3  # type: ignore[operator]
    row["gain"] = row["fixed_ms"] / row["adaptive_ms"]
    return row


def _changes_count(best: dict[tuple, int], axis: int, others: tuple[int, ...]) -> tuple[int, int]:
    """How often the best cut differs between neighbouring values of condition field ``axis``."""
    groups: dict[tuple, list[tuple[float, int]]] = {}
    for cond, k in best.items():
        key = tuple(cond[i] for i in others)
        groups.setdefault(key, []).append((cond[axis], k))
    changed = total = 0
    for items in groups.values():
        items.sort()
        for (_, a), (_, b) in itertools.pairwise(items):
            changed += a != b
            total += 1
    return changed, total


def _plot(rows: list[dict[str, Any]], changes: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for bw in sorted({r["bandwidth_mbps"] for r in rows}):
        pts = [r for r in rows if r["bandwidth_mbps"] == bw and r["device_load"] == 0 and r["edge_load"] == 0]
        axes[0].plot([r["cut"] for r in pts], [r["measured_s"] * 1e3 for r in pts], "o-", label=f"{bw:g} Mbit/s")
        axes[0].plot([r["cut"] for r in pts], [r["estimated_s"] * 1e3 for r in pts], "k:", alpha=0.4)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("cut (blocks on the device)")
    axes[0].set_ylabel("latency per batch (ms), dotted: estimate")
    axes[0].set_title("VGG5 latency per cut, no load")
    axes[0].legend(fontsize=8)
    labels = [f"{c['from_mbps']:g}->{c['to_mbps']:g}" for c in changes]
    xs = range(len(changes))
    axes[1].bar([x - 0.2 for x in xs], [c["fixed_ms"] for c in changes], 0.4, label="fixed cut")
    axes[1].bar([x + 0.2 for x in xs], [c["adaptive_ms"] for c in changes], 0.4, label="re-planned cut")
    axes[1].set_xticks(list(xs), labels)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("bandwidth change (Mbit/s)")
    axes[1].set_ylabel("latency after the change (ms)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(NAME, argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("vgg5").eval()  # latency does not depend on the weights' values
    cm = CutModel.profile(model, cfg["batch_size"])
    rows = sensitivity_study(model, _conditions(cfg), cfg["batch_size"], cfg["repeats"], cut_model=cm)
    fields = ("bandwidth_mbps", "device_load", "edge_load")
    lowest: dict[tuple, tuple[float, int]] = {}
    for r in rows:
        key = tuple(r[f] for f in fields)
        if key not in lowest or r["measured_s"] < lowest[key][0]:
            lowest[key] = (r["measured_s"], int(r["cut"]))
    best = {key: cut for key, (_, cut) in lowest.items()}
    bw_changed, bw_total = _changes_count(best, 0, (1, 2))
    load_changed, load_total = _changes_count({k: v for k, v in best.items() if k[1] == 0}, 2, (0, 1))
    dl_changed, dl_total = _changes_count({k: v for k, v in best.items() if k[2] == 0}, 1, (0, 2))
    changes = [_change(model, cm, a, b, cfg) for a, b in tqdm(cfg["changes"], desc="bandwidth changes")]
    print_table(changes, title="bandwidth changes")
    errors = sorted(abs(r["estimated_s"] - r["measured_s"]) / r["measured_s"] for r in rows)
    figures = {
        "repartition_gain_ratio": math.exp(statistics.fmean(math.log(c["gain"]) for c in changes)),
        "replan_matches_brute_force": statistics.fmean(c["cut_after"] == c["brute_force_cut"] for c in changes),
        "replanned_vs_best_measured": statistics.fmean(
            c["measured_replanned_ms"] / c["measured_best_ms"] for c in changes
        ),
        "best_cut_changes_bandwidth": bw_changed / max(bw_total, 1),
        "best_cut_changes_load": (load_changed + dl_changed) / max(load_total + dl_total, 1),
        "cut_estimation_error": errors[len(errors) // 2] * 100,
    }
    _plot(rows, changes, png_path(NAME, args))
    details = {
        "config": {**cfg, "model": "vgg5 (untrained weights: latency only)", "device_slowdown": DEVICE},
        "best_cuts": [{**dict(zip(fields, k, strict=True)), "best_cut": v} for k, v in best.items()],
        "changes": changes,
        "sensitivity": rows,
        "seconds": time.perf_counter() - t0,
    }
    write_result(NAME, args, figures, details)


if __name__ == "__main__":
    main()
