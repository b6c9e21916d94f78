"""Benchmark ``pipeline``: PiPar's pipelined split training vs sequential split training vs classic FL.

For three emulated bandwidths and two device slow-downs, side by side in one run: the (k, m) PiPar's selection
picks from this machine's profile, its measured iteration time pipelined, the same split sequential (m = 1), and
classic FL (local training at the device's speed). On one scenario (50 Mbit/s, 4x slower device) every (k, m) of
a grid is measured too, for the selection's quality (``aps_vs_exhaustive_ratio``: measured time of the selected
plan over the best measured one) and the prediction error of the critical-path model.

Figures: ``speedup_vs_sequential`` and ``speedup_vs_fl`` (best over scenarios, as PiPar reports "up to"; the
means over scenarios are ``*_mean``), ``server_idle_ratio_vs_fl`` (server idle time per batch in FL, where the edge
server does no training at all, over pipelined), ``pipeline_efficiency`` (the slowest stage's busy time over the
measured iteration time; 1.0 is the limit), ``aps_vs_exhaustive_ratio`` (over every offloading split point
``k = 0 .. n-1`` and five micro-batch counts), ``prediction_error`` (mean relative error of predicted vs measured
iteration time over the grid) and ``prediction_error_selected`` (the same for the plan selected in each scenario).
Iteration times are the span of the batches' phases over their number (what PiPar's model predicts); each scenario
also reports its round time (all batches, session open and tail fetch included) for the three ways of training.
The offloading plans are compared with classic FL, not chosen instead of it: with a device as fast as the edge
server and both on one machine, FL is faster (see the scenarios), and the app's ``split-point = "auto"`` then
keeps the node training locally.

Device and edge server share this machine's cores, so torch runs one intra-op thread: the device's thread and the
edge server's each have a core, as on two machines (with a thread pool each, they would contend for both cores and
inflate tiny micro-batches' times several-fold). The profile is measured the same way.
"""

from __future__ import annotations

import statistics

import torch
from tqdm import tqdm

from benchmarks._harness import edge_server, run_local, run_split
from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.models import build_model, profile_model
from edgeflower.planning.pipar import predict_iteration, select_plan
from edgeflower.timeline import PHASES
from edgeflower.transport.emulation import LinkProfile

BATCH = 50
LATENCY_MS = 2.0


def _efficiency(totals: dict[str, float]) -> float:
    return max(totals[f"{p}-s"] for p in PHASES) / totals["span-s"]


def main() -> None:
    args = parse_args("pipeline")
    n_batches = 2 if args.quick else 6
    torch.set_num_threads(1)  # one core for the device, one for the edge server (see the module docstring)
    bandwidths = [50.0] if args.quick else [10.0, 50.0, 100.0]
    slowdowns = [4.0] if args.quick else [1.0, 4.0]
    torch.manual_seed(0)
    # --quick: a narrow VGG5 (width 0.25): each session sends the tail's weights up and fetches them back
    model = build_model("vgg5", norm="group", **({"width": 0.25} if args.quick else {}))
    profile = profile_model(model, batch_size=BATCH, repeats=2 if args.quick else 5)
    data = load_dataset("fashion-mnist").subset(range(BATCH * n_batches))
    batches = list(BatchLoader(data, BATCH, seed=0).batches(0))
    rows = []
    with edge_server() as server:
        run_split(server, model, batches[:1], 3, 2)  # warm-up
        for mbps in bandwidths:
            for slowdown in slowdowns:
                link = LinkProfile(mbps, mbps, LATENCY_MS)
                offload = [k for k in range(model.num_blocks)]
                plan = select_plan(profile, BATCH, slowdown, link, split_points=offload)
                fl = run_local(model, batches, slowdown)
                seq = run_split(server, model, batches, plan.split_point, 1, slowdown, link)
                pipe = run_split(server, model, batches, plan.split_point, plan.micro_batches, slowdown, link)
                pipe_idle = (pipe.totals["span-s"] - pipe.totals["server-s"]) / n_batches
                rows.append(
                    {
                        "mbps": mbps,
                        "slowdown": slowdown,
                        "k": plan.split_point,
                        "m": plan.micro_batches,
                        "fl_iter_s": fl.per_batch_s,
                        "fl_round_s": fl.seconds,
                        "seq_round_s": seq.seconds,
                        "pipe_round_s": pipe.seconds,
                        "seq_iter_s": seq.per_batch_s,
                        "pipe_iter_s": pipe.per_batch_s,
                        "predicted_s": plan.predicted_s,
                        "speedup_vs_seq": seq.per_batch_s / pipe.per_batch_s,
                        "speedup_vs_fl": fl.per_batch_s / pipe.per_batch_s,
                        "server_idle_ratio_vs_fl": fl.per_batch_s / max(pipe_idle, 1e-9),
                        "efficiency": _efficiency(pipe.totals),
                    }
                )
        print_table(rows, title=f"per-batch seconds, VGG5 (GroupNorm), batch {BATCH}, {n_batches} batches")

        grid_link, grid_slowdown = LinkProfile(50.0, 50.0, LATENCY_MS), 4.0
        ks = [0, 3] if args.quick else list(range(model.num_blocks))  # every split point that offloads
        ms = [1, 5] if args.quick else [1, 2, 5, 10, 25]
        grid = []
        for k in tqdm(ks, desc="exhaustive (k, m) grid"):
            for m in ms:
                meas = run_split(server, model, batches, k, m, grid_slowdown, grid_link)
                pred = predict_iteration(profile, k, m, BATCH, grid_slowdown, grid_link)
                grid.append({"k": k, "m": m, "measured_s": meas.per_batch_s, "predicted_s": pred})
        chosen = select_plan(profile, BATCH, grid_slowdown, grid_link, split_points=ks, micro_batches=ms)
        chosen_meas = next(
            g["measured_s"] for g in grid if (g["k"], g["m"]) == (chosen.split_point, chosen.micro_batches)
        )
    print_table(grid, title="exhaustive grid at 50 Mbit/s, 4x slower device")
    best = min(g["measured_s"] for g in grid)
    figures = {
        "speedup_vs_sequential": max(r["speedup_vs_seq"] for r in rows),
        "speedup_vs_fl": max(r["speedup_vs_fl"] for r in rows),
        "server_idle_ratio_vs_fl": max(r["server_idle_ratio_vs_fl"] for r in rows),
        "pipeline_efficiency": statistics.mean(r["efficiency"] for r in rows),
        "aps_vs_exhaustive_ratio": chosen_meas / best,
        "prediction_error": statistics.mean(abs(g["predicted_s"] - g["measured_s"]) / g["measured_s"] for g in grid),
        "prediction_error_selected": statistics.mean(
            abs(r["predicted_s"] - r["pipe_iter_s"]) / r["pipe_iter_s"] for r in rows
        ),
        "speedup_vs_sequential_mean": statistics.mean(r["speedup_vs_seq"] for r in rows),
        "speedup_vs_fl_mean": statistics.mean(r["speedup_vs_fl"] for r in rows),
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['mbps']:g}M/x{r['slowdown']:g}" for r in rows]
    x = range(len(rows))
    for off, key, name in (
        (-0.27, "fl_iter_s", "classic FL"),
        (0, "seq_iter_s", "sequential split"),
        (0.27, "pipe_iter_s", "pipelined split"),
    ):
        axes[0].bar([i + off for i in x], [r[key] for r in rows], width=0.27, label=name)
    axes[0].set_xticks(list(x), labels)
    axes[0].set(title="iteration time (bandwidth / device slow-down)", ylabel="s per batch")
    axes[0].legend()
    axes[1].scatter([g["predicted_s"] for g in grid], [g["measured_s"] for g in grid])
    lim = max(max(g["predicted_s"] for g in grid), max(g["measured_s"] for g in grid)) * 1.05
    axes[1].plot([0, lim], [0, lim], color="#999", linestyle="--")
    axes[1].set(title="predicted vs measured (k, m grid)", xlabel="predicted s", ylabel="measured s")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path("pipeline", args), dpi=110)
    write_result("pipeline", args, figures, {"scenarios": rows, "grid": grid, "batches": n_batches})


if __name__ == "__main__":
    main()
