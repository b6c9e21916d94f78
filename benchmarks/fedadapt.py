"""Benchmark ``fedadapt``: adaptive offloading on the emulated FedAdapt testbed.

Five devices (2x Pi 3, 2x Pi 4, 1 Jetson as compute slow-downs 8/4/2 of this machine) on 75 Mbit/s links; from
round ``drop`` one Pi 3 and one Pi 4 fall to 5 Mbit/s. VGG5 on CIFAR-10 where it is present (``--dataset auto``,
the default; torchvision's files under ``$EDGEFLOWER_DATA``), else Fashion-MNIST (IID partitions), batch 100,
SGD lr 0.01 momentum 0.9 (x0.1 after half the rounds). Rounds run in-process without the Flower engine: every
node trains ``batches`` mini-batches per round, offloaded ones through :class:`SplitTrainer` against an in-process
:class:`EdgeServer` with the node's device and link emulation; nodes run one after another and each node's time is
measured on its own, the round time is the slowest node's (as if they ran in parallel, one edge server per device).
The server FedAvgs the models and evaluates on the test set.

Compared side by side, from the same initial model and data: classic FL; the best fixed split (every split point
probed for one batch per node in round 1, the fastest kept); the exact planner; the FedAdapt agent (trained offline
first with ``train-agent``'s environment on this machine's profile; the policy file is written to
``results/fedadapt_agent.pt`` with its reward curve ``results/fedadapt_agent.png``).

Figures about the drop (round ``drop`` is the first round run at 5 Mbit/s; its plan was made before any node had
measured the drop, so the first plan that can react is round ``drop + 1``):

* ``agent_split_changes`` / ``exact_split_changes``: the number of (node, round) pairs whose split point differs
  from the node's split point in the round before, over rounds ``drop + 1 .. rounds`` (the reactions to the drop;
  ``*_all_rounds``: over rounds ``3 .. rounds``, i.e. every change after the first planned round);
* ``agent_vs_exact_ratio``: the agent's summed round times (slowest node per round) over rounds ``drop .. rounds``
  divided by the exact planner's over the same rounds (``agent_vs_exact_ratio_all_rounds``: over all rounds;
  ``agent_vs_exact_ratio_planned_rounds``: over rounds ``2 .. rounds``);
* ``changing_bandwidth_ratio_vs_fl``: the agent's summed round times over rounds ``drop .. rounds`` divided by
  classic FL's.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.commands.train_agent import train_policy
from edgeflower.data import BatchLoader, load_dataset, partition
from edgeflower.data.datasets import DATASET_SHAPES, DataError, ImageData
from edgeflower.device.split import SplitTrainer
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.models.splittable import SplittableModel
from edgeflower.planning import (
    CostModel,
    ExactPlanner,
    FixedPlanner,
    Planner,
    fedadapt_testbed,
    make_planner,
    split_points,
)
from edgeflower.planning.costmodel import median_profile
from edgeflower.planning.scenario import Testbed
from edgeflower.training import evaluate, make_optimizer, train_local
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.emulation import EmulatedLink

SECRET = b"fedadapt-benchmark-secret-0123456789abcdef"
BATCH = 100


class Bench:
    """Shared state of one benchmark run: data, testbed, edge server, initial model."""

    def __init__(
        self,
        rounds: int,
        batches: int,
        drop: int,
        eval_samples: int,
        edge: EdgeServer,
        dataset: str,
        model_options: dict[str, Any] | None = None,
        batch: int = BATCH,
    ) -> None:
        self.rounds, self.batches, self.drop, self.batch = rounds, batches, drop, batch
        self.testbed: Testbed = fedadapt_testbed(drop_round=drop)
        train = load_dataset(dataset)
        parts = partition(train.y.numpy(), len(self.testbed.nodes), "iid", seed=0)
        self.data: list[ImageData] = [train.subset(p) for p in parts]
        self.test = load_dataset(dataset, train=False).subset(range(eval_samples))
        torch.manual_seed(0)
        self.init = build_model("vgg5", in_shape=DATASET_SHAPES[dataset], **(model_options or {}))
        self.edge = edge
        self.issuer = TokenIssuer(SECRET)
        self.client = EdgeClient(edge.address)
        self.run_id = 0  # each planner's run is a run of its own: an edge server refuses a node's earlier rounds

    def lr(self, rnd: int) -> float:
        return 0.01 if rnd <= self.rounds // 2 else 0.001

    def train_node(self, model: SplittableModel, node: int, k: int, rnd: int, batches: int) -> dict[str, float]:
        """Train ``model`` in place on node ``node``'s data for one round at split ``k``; return its metrics."""
        spec = self.testbed.nodes[node]
        data = list(BatchLoader(self.data[node], self.batch, seed=node, max_batches=batches).batches(rnd))
        link = spec.link.at(rnd)
        opt = OptimizerSettings(self.lr(rnd), 0.9, 0.0)
        seen = {"uplink-mbps": link.uplink_mbps, "downlink-mbps": link.downlink_mbps, "batches": len(data)}
        if k == model.num_blocks:
            res = train_local(model, data, make_optimizer(model.parameters(), opt.lr, 0.9), spec.device.slowdown)
            return {"train-time-s": res.seconds, "device-s": res.seconds, "num-examples": res.num_examples, **seen}
        emu = EmulatedLink(link)
        token = self.issuer.issue(run_id=self.run_id, node_id=node, server_round=rnd)
        trainer = SplitTrainer(model, k, opt, spec.device, emu)
        result = trainer.train(data, lambda kk, tail, o: self.client.open_session(token, model.spec, kk, tail, o))
        metrics = {k2: float(v) for k2, v in result.metrics().items()}
        metrics.update({"split-point": k, "uplink-bytes": emu.bytes[True], "downlink-bytes": emu.bytes[False], **seen})
        return metrics

    def run(self, name: str, planner: Planner) -> dict[str, Any]:
        """Train all rounds with ``planner``; per round: split points, node times, predictions, accuracy."""
        self.run_id += 1
        model = copy.deepcopy(self.init)
        nodes = list(range(len(self.testbed.nodes)))
        rows = []
        for rnd in range(1, self.rounds + 1):
            plan = split_points(planner.plan(rnd, nodes))
            predicted = {}
            if isinstance(planner, ExactPlanner | FixedPlanner) or hasattr(planner, "predicted_round_s"):
                for n in nodes:
                    p = planner.predicted_round_s(n, plan[n], self.batches)  # type: ignore[attr-defined]
                    if p is not None:
                        predicted[n] = p
            states, metrics = [], {}
            for n in nodes:
                local = copy.deepcopy(model)
                metrics[n] = self.train_node(local, n, plan[n], rnd, self.batches)
                metrics[n]["split-point"] = plan[n]
                states.append(local.state_dict())
            model.load_state_dict(fedavg(states))
            planner.observe(rnd, metrics)
            loss, acc = evaluate(model, self.test)
            times = {n: metrics[n]["train-time-s"] for n in nodes}
            rows.append(
                {
                    "round": rnd,
                    "round_s": max(times.values()),
                    "node_s": times,
                    "splits": dict(plan),
                    "predicted_s": predicted,
                    "accuracy": acc,
                    "loss": loss,
                }
            )
            print(
                f"  {name:>10} round {rnd:2d}: {max(times.values()):6.2f} s  acc {acc:.3f}  splits {plan}", flush=True
            )
        return {
            "name": name,
            "rows": rows,
            "total_s": sum(r["round_s"] for r in rows),
            "accuracy": rows[-1]["accuracy"],
        }

    def probe_fixed(self, ks: list[int]) -> dict[int, float]:
        """Round-1 time per batch of the slowest node at each split point (one batch per node)."""
        out = {}
        for k in ks:
            per_node = []
            for n in range(len(self.testbed.nodes)):
                m = self.train_node(copy.deepcopy(self.init), n, k, 1, 1)
                per_node.append(m["train-time-s"] / max(1, m["batches"]))
            out[k] = max(per_node)
        return out


def fedavg(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Equal-weight average (every node trains the same number of samples); integer buffers from the first."""
    out = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            out[key] = value.clone()
    return out


def _node_totals(run: dict[str, Any]) -> dict[int, float]:
    totals: dict[int, float] = {}
    for row in run["rows"]:
        for n, t in row["node_s"].items():
            totals[n] = totals.get(n, 0.0) + t
    return totals


def _prediction_error(run: dict[str, Any]) -> float:
    errs = [
        abs(row["predicted_s"][n] - row["node_s"][n]) / row["node_s"][n]
        for row in run["rows"]
        for n in row["predicted_s"]
    ]
    return float(np.mean(errs)) if errs else float("nan")


def _plots(runs: dict[str, dict[str, Any]], names: list[str], testbed: Testbed, drop: int, args) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in ("fl", "fixed", "exact", "agent"):
        rows = runs[key]["rows"]
        axes[0].plot([r["round"] for r in rows], [r["round_s"] for r in rows], marker="o", label=names[key_index(key)])
        axes[1].plot([r["round"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=names[key_index(key)])
    for ax in axes:
        ax.axvline(drop - 0.5, color="#a33", ls=":", lw=1)
    axes[0].set(title="round time (slowest node)", xlabel="round", ylabel="s")
    axes[1].set(title="test accuracy", xlabel="round", ylabel="accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png_path("fedadapt", args), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    for ax, key in zip(axes, ("fl", "fixed", "exact", "agent"), strict=True):
        rows = runs[key]["rows"]
        for n, node in enumerate(testbed.nodes):
            ax.plot([r["round"] for r in rows], [r["node_s"][n] for r in rows], marker=".", label=node.name)
        ax.axvline(drop - 0.5, color="#a33", ls=":", lw=1)
        ax.set(title=names[key_index(key)], xlabel="round")
    axes[0].set_ylabel("node round time (s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path("fedadapt", args, "_node_times"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, key in zip(axes, ("exact", "agent"), strict=True):
        rows = runs[key]["rows"]
        for n, node in enumerate(testbed.nodes):
            ax.plot(
                [r["round"] for r in rows], [r["splits"][n] + 0.06 * (n - 2) for r in rows], marker="o", label=node.name
            )
        ax.axvline(drop - 0.5, color="#a33", ls=":", lw=1)
        ax.set(title=f"split points: {names[key_index(key)]}", xlabel="round")
    axes[0].set_ylabel("split point k (7 = no offloading)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path("fedadapt", args, "_splits"), dpi=110)
    plt.close(fig)


def key_index(key: str) -> int:
    return ("fl", "fixed", "exact", "agent").index(key)


def choose_dataset(requested: str) -> str:
    """``auto``: CIFAR-10 when its files are present (as in the FedAdapt paper), else Fashion-MNIST."""
    if requested != "auto":
        return requested
    try:
        load_dataset("cifar10", train=False)
    except DataError:
        return "fashion-mnist"
    return "cifar10"


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="auto",
        choices=["auto", "cifar10", "fashion-mnist"],
        help="auto (default): CIFAR-10 where present, else Fashion-MNIST (--quick: Fashion-MNIST)",
    )


def main() -> None:
    args = parse_args("fedadapt", extra=_options)
    quick_default = args.quick and args.dataset == "auto"  # CI's quick run is the same on every machine
    dataset = "fashion-mnist" if quick_default else choose_dataset(args.dataset)
    print(f"dataset: {dataset}", flush=True)
    t_start = time.perf_counter()
    if args.quick:
        # round 1 measures, round 2 is planned and after the drop. A narrow VGG5 (width 0.25: 0.12 MB of weights
        # instead of 1.8 MB) keeps an offloaded round over the dropped 5 Mbit/s links under a second (the tail's
        # weights go up and come back each round), and a short agent training only has to run, not to be good
        rounds, batches, drop, eval_samples, episodes, probe_ks = 2, 1, 2, 100, 20, [0]
    else:
        rounds, batches, drop, eval_samples, episodes, probe_ks = 10, 6, 6, 5000, 900, list(range(7))
    batch = 32 if args.quick else BATCH  # --quick: less emulated compute and wire time per batch
    restarts, trials, repeats = (1, 1, 2) if args.quick else (3, 3, 5)
    model_options: dict[str, Any] = {"width": 0.25} if args.quick else {}
    model = build_model("vgg5", in_shape=DATASET_SHAPES[dataset], **model_options)
    profile = median_profile(model, batch, repeats=repeats, trials=trials)  # per-block median: robust to load bursts
    print(f"profiled in {time.perf_counter() - t_start:.1f} s", flush=True)
    policy_path = Path(args.out) / f"fedadapt_agent{'.quick' if args.quick else ''}.pt"
    print(f"training the FedAdapt agent ({restarts} x {episodes} episodes) ...", flush=True)
    trained = train_policy(
        policy_path,
        in_shape=DATASET_SHAPES[dataset],
        episodes=episodes,
        batch_size=batch,
        seed=0,
        progress=False,
        restarts=restarts,
        profile=profile,
    )
    print(
        f"  agent reward {trained.agent_reward:.2f} vs no offloading {trained.no_offload_reward:.2f} "
        f"({time.perf_counter() - t_start:.1f} s)",
        flush=True,
    )
    with EdgeServer(secret=SECRET) as edge:
        bench = Bench(rounds, batches, drop, eval_samples, edge, dataset, model_options, batch)
        bench.train_node(copy.deepcopy(bench.init), 4, 4, 1, 1)  # warm-up: gRPC channel, allocator
        cost = CostModel(profile)
        runs = {"fl": bench.run("classic FL", FixedPlanner(cost, model.num_blocks))}
        probes = bench.probe_fixed(probe_ks)
        fl_per_batch = runs["fl"]["rows"][0]["round_s"] / batches
        best_k = min(probes, key=lambda k: probes[k])
        if probes[best_k] >= fl_per_batch:
            best_k = model.num_blocks
        runs["fixed"] = bench.run(f"fixed k={best_k}", FixedPlanner(cost, best_k))
        runs["exact"] = bench.run("exact", make_planner("exact", model, profile))
        runs["agent"] = bench.run(
            "FedAdapt", make_planner("fedadapt", model, profile, policy_path=str(policy_path), num_groups=3)
        )
        bench.client.close()
    names = ["classic FL", f"best fixed split (k={best_k})", "exact planner", "FedAdapt agent"]
    fl, agent, exact = runs["fl"], runs["agent"], runs["exact"]
    fl_nodes, agent_nodes = _node_totals(fl), _node_totals(agent)
    straggler = max(fl_nodes, key=lambda n: fl_nodes[n])
    after = [r for r in range(drop, rounds + 1)]

    def total_after(run: dict[str, Any]) -> float:
        return sum(row["round_s"] for row in run["rows"] if row["round"] in after)

    def total_planned(run: dict[str, Any]) -> float:  # without round 1, the classic-FL measurement round
        return sum(row["round_s"] for row in run["rows"] if row["round"] > 1)

    def split_changes(run: dict[str, Any], first: int) -> int:  # changes in rounds first.. vs the round before
        rows = [r for r in run["rows"] if r["round"] >= first - 1]
        return sum(a["splits"][n] != b["splits"][n] for a, b in itertools.pairwise(rows) for n in a["splits"])

    figures = {
        "round_time_ratio_agent_vs_fl": agent["total_s"] / fl["total_s"],
        "round_time_ratio_exact_vs_fl": exact["total_s"] / fl["total_s"],
        "round_time_ratio_fixed_vs_fl": runs["fixed"]["total_s"] / fl["total_s"],
        "straggler_time_ratio_vs_fl": agent_nodes[straggler] / fl_nodes[straggler],
        "typical_device_time_ratio_vs_fl": statistics.median(agent_nodes[n] / fl_nodes[n] for n in fl_nodes),
        "changing_bandwidth_ratio_vs_fl": total_after(agent) / total_after(fl),
        "agent_vs_exact_ratio": total_after(agent) / max(total_after(exact), 1e-9),
        "agent_vs_exact_ratio_all_rounds": agent["total_s"] / exact["total_s"],
        "agent_vs_exact_ratio_planned_rounds": total_planned(agent) / max(total_planned(exact), 1e-9),
        "agent_vs_fixed_ratio": agent["total_s"] / runs["fixed"]["total_s"],
        "agent_split_changes": split_changes(agent, drop + 1),
        "exact_split_changes": split_changes(exact, drop + 1),
        "agent_split_changes_all_rounds": split_changes(agent, 3),
        "exact_split_changes_all_rounds": split_changes(exact, 3),
        "accuracy_delta_vs_fl": agent["accuracy"] - fl["accuracy"],
        "exact_accuracy_delta_vs_fl": exact["accuracy"] - fl["accuracy"],
        "prediction_error": _prediction_error(exact),
        "best_fixed_split": best_k,
        "fl_accuracy": fl["accuracy"],
    }
    table = [
        {
            "method": names[i],
            "total_s": runs[key]["total_s"],
            "after_drop_s": total_after(runs[key]),
            "final_accuracy": runs[key]["accuracy"],
        }
        for i, key in enumerate(("fl", "fixed", "exact", "agent"))
    ]
    print_table(table, title=f"fedadapt testbed: {rounds} rounds x {batches} batches of {batch}, drop at round {drop}")
    _plots(runs, names, bench.testbed, drop, args)
    details = {
        "setup": {
            "dataset": dataset,
            "rounds": rounds,
            "batches_per_round": batches,
            "batch_size": batch,
            "drop_round": drop,
            "eval_samples": eval_samples,
            "agent_episodes": episodes,
            **({"model_options": model_options} if model_options else {}),
            "testbed": {n.name: {"slowdown": n.device.slowdown} for n in bench.testbed.nodes},
            "run_config": bench.testbed.run_config(),
        },
        "methods": table,
        "fixed_probe_s_per_batch": {str(k): v for k, v in probes.items()},
        "agent_training": {
            "eval_reward": trained.agent_reward,
            "no_offload_reward": trained.no_offload_reward,
            "eval_round_ratio_vs_fl": trained.agent_round_ratio,
            "restarts": restarts,
            "profile_trials": trials,
            "profile_repeats": repeats,
            "profile_s_per_batch": {str(i): b.fwd_s + b.bwd_s for i, b in enumerate(profile.blocks)},
            "policy_sha256": trained.header.sha256,
        },
        "runs": {key: run["rows"] for key, run in runs.items()},
        "seconds": time.perf_counter() - t_start,
    }
    write_result("fedadapt", args, figures, details)


if __name__ == "__main__":
    main()
