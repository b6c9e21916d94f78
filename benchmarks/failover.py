"""Benchmark ``failover``: CONTINUER's failover techniques on a partitioned ResNet-18 (Fashion-MNIST).

A failout-trained ResNet-18 (width 8) is partitioned over 4 inference nodes (separate ``edgeflower infer-node``
processes in full mode; in-process nodes in ``--quick`` mode) with cuts ``0,2,3,6,10``. For every failed node and
every technique available for it, a fresh chain serves steady load from client threads, the node is killed
(SIGKILL), the controller detects it (heartbeat or a failed forward), selects the technique (objectives chosen so
that this technique is the one they demand) and switches. Recorded: requests lost (sent but never answered) and
answered twice, downtime of the switch, selection time, and the accuracy (on held-out test data, after the load)
and latency (median of the load's requests through the new route: the load the controller's estimates were
made under) measured through the new route, against the estimates the controller selected with at the failure.

Figures: ``requests_lost`` (must be 0), ``answered_twice``, ``selection_ms`` (mean, estimation + selection),
``select_only_ms``, ``accuracy_estimation_error`` (mean absolute, percentage points), ``latency_estimation_error``
(mean relative, %), ``downtime_estimation_error`` (repartition, mean relative, %), ``downtime_s_<technique>``,
``selection_accuracy`` (over a grid of objectives evenly spread over the candidates' values: selection from
estimates = selection from measured values) and ``selection_accuracy_adversarial`` (thresholds between every pair
of values, so also between each estimate and its measurement).
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, ImageData, load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.serving import (
    Candidate,
    Controller,
    ControllerConfig,
    InferenceNode,
    Objectives,
    ServingBundle,
    ServingClient,
    build_bundle,
    failout_train,
    select,
)
from edgeflower.serving.launch import NodeProcess
from edgeflower.serving.plan import Route
from edgeflower.training import make_optimizer
from edgeflower.transport.auth import RenewingToken, TokenIssuer

NAME = "failover"
SECRET = b"edgeflower-failover-benchmark-secret"
CUTS = (0, 2, 3, 6, 10)

FULL = {
    "train_batches": 400,
    "exit_samples": 10000,
    "val_samples": 5000,
    "test_samples": 5000,
    "processes": True,
    "failed_nodes": [1, 2, 3],
    "load_threads": 3,
    "answers_before_kill": 30,
    "answers_after_kill": 60,
}
QUICK = {
    **FULL,
    "train_batches": 5,
    "exit_samples": 300,
    "val_samples": 200,
    "test_samples": 250,
    "processes": False,
    "failed_nodes": [1],
    "load_threads": 2,
    "answers_before_kill": 5,
    "answers_after_kill": 10,
}


def _client_token(client: int, ttl_s: float) -> str:
    return TokenIssuer(SECRET).issue(0, client, 0, ttl_s=ttl_s, role="client")


def _bundle(cfg: dict[str, Any]) -> tuple[ServingBundle, ImageData]:
    train = load_dataset("fashion-mnist", train=True)
    test = load_dataset("fashion-mnist", train=False)
    torch.manual_seed(0)
    model = build_model("resnet18", width=8)
    opt = make_optimizer(model.parameters(), 0.03, 0.9)
    failout_train(model, BatchLoader(train, 64, seed=0, max_batches=cfg["train_batches"]), opt, blocks=[2], p=0.3)
    model.eval()
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
    val = test.subset(order[: cfg["val_samples"]])
    held_out = test.subset(order[cfg["val_samples"] : cfg["val_samples"] + cfg["test_samples"]])
    exit_data = train.subset(
        torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[: cfg["exit_samples"]]
    )
    return build_bundle(model, CUTS, exit_data, val, batch_size=32), held_out


class _Chain:
    """Four nodes (processes or in-process) that can be killed one by one."""

    def __init__(self, processes: bool, secret_file: Path) -> None:
        self.processes = processes
        if processes:
            self.nodes: list[Any] = []
            for _ in range(len(CUTS) - 1):
                self.nodes.append(NodeProcess(secret_file))
        else:
            self.nodes = [InferenceNode(secret=SECRET) for _ in range(len(CUTS) - 1)]
            for n in self.nodes:
                n.start()

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def kill(self, i: int) -> None:
        if self.processes:
            self.nodes[i].kill()
        else:
            self.nodes[i].stop()

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.kill(i)


def _objective_grid(cands: list[Candidate]) -> list[Objectives]:
    """Thresholds between (and beyond) the candidates' values, under every priority order."""

    def between(values: list[float], default: float) -> list[float]:
        v = sorted(set(values))
        return [default, *[(a + b) / 2 for a, b in itertools.pairwise(v)]]

    accs = between([c.accuracy for c in cands], 0.0)
    lats = between([c.latency_s for c in cands], float("inf"))
    downs = between([c.downtime_s for c in cands], float("inf"))
    orders = list(itertools.permutations(("accuracy", "latency", "downtime")))
    return [Objectives(a, lat, d, p) for a, lat, d, p in itertools.product(accs, lats, downs, orders)]


def _objectives_for(technique: str, cands: dict[str, Candidate]) -> Objectives | None:
    """The first objectives of the grid under which ``technique`` is selected (``None``: it is dominated)."""
    for obj in _objective_grid(list(cands.values())):
        sel = select(list(cands.values()), obj)
        if sel.meets_objectives and sel.chosen.technique == technique:
            return obj
    return None


def _load(address: str, x: torch.Tensor, threads: int, stop: threading.Event, out: dict[str, Any]) -> list:
    def loop(t: int) -> None:
        with ServingClient(address, RenewingToken(partial(_client_token, t)), deadline_s=60) as client:
            i = 0
            while not stop.is_set():
                rid = f"t{t}-{i}"
                with out["lock"]:
                    out["sent"].append(rid)
                try:
                    client.predict(x, rid)
                except Exception as exc:
                    out["errors"].append(repr(exc))
                    return
                with out["lock"]:
                    out["answers"][rid] = out["answers"].get(rid, 0) + 1
                    out["times"].append(time.perf_counter())
                i += 1

    workers = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    return workers


def _wait(out: dict[str, Any], n: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(out["answers"]) < n and time.monotonic() < deadline and not out["errors"]:
        time.sleep(0.01)


def _accuracy(ctl: Controller, route: Route, test: ImageData) -> float:
    correct = 0
    for i in range(0, len(test), 250):
        logits = ctl.run_route(route, f"acc-{i}", test.x[i : i + 250])
        correct += int((logits.argmax(1) == test.y[i : i + 250]).sum())
    return correct / len(test)


def _run_case(
    bundle: ServingBundle, test: ImageData, cfg: dict[str, Any], failed: int, technique: str, tmp: Path
) -> dict[str, Any]:
    chain = _Chain(cfg["processes"], tmp / "secret")
    stop = threading.Event()
    out: dict[str, Any] = {"sent": [], "answers": {}, "errors": [], "times": [], "lock": threading.Lock()}
    workers: list[threading.Thread] = []
    try:
        with Controller(bundle, chain.addresses, SECRET, config=ControllerConfig(heartbeat_s=0.1)) as ctl:
            cands = {c.technique: c for c, _ in ctl.candidates(failed)}
            objectives = _objectives_for(technique, cands)
            if objectives is None:  # dominated by another option: no objectives demand it, measure it pinned
                ctl.pinned = technique
            else:
                ctl.objectives = objectives
            workers = _load(ctl.address, test.x[:32], cfg["load_threads"], stop, out)
            _wait(out, cfg["answers_before_kill"])
            killed_at = time.perf_counter()
            chain.kill(failed)
            _wait(out, len(out["answers"]) + cfg["answers_after_kill"])
            # the estimates were made under this load: the new route's latency is that of the load's requests
            lat = statistics.median(ctl.route_latencies())
            stop.set()
            for w in workers:
                w.join(120)
            event = ctl.events[0]
            acc = _accuracy(ctl, ctl.route, test)
            est = next(e for e in event.estimates if e["technique"] == event.technique)  # made at the failure
            after = [t for t in out["times"] if t > killed_at]
            return {
                "failed_node": failed,
                "wanted": technique,
                "chosen": event.technique,
                "detected_by": event.detected_by,
                "sent": len(out["sent"]),
                "lost": len(set(out["sent"]) - set(out["answers"])),
                "answered_twice": sum(1 for v in out["answers"].values() if v > 1),
                "errors": out["errors"],
                "selection_ms": event.selection_ms,
                "downtime_s": event.downtime_s,
                "service_gap_s": (after[0] - killed_at) if after else float("nan"),
                "est_accuracy": est["accuracy"],
                "accuracy": acc,
                "est_latency_ms": est["latency_s"] * 1e3,
                "latency_ms": lat * 1e3,
                "est_downtime_s": est["downtime_s"],
                "pinned": objectives is None,
                "objectives": vars(objectives) if objectives is not None else None,
                "candidates": {e["technique"]: e for e in event.estimates},
            }
    finally:
        stop.set()
        for w in workers:
            w.join(120)
        chain.close()


def _uniform_grid(cands: list[Candidate], steps: int = 16) -> list[Objectives]:
    """Thresholds evenly spaced over (and beyond) the range of the candidates' values, under every priority order.

    What users might ask for, independent of where the estimates fall; unlike :func:`_objective_grid`, which
    puts a threshold between every pair of values, so also between each estimate and its own measurement.
    """

    def spread(values: list[float], default: float) -> list[float]:
        lo, hi = min(values), max(values)
        return [default, *(lo + (hi - lo) * (i + 0.5) / steps for i in range(steps))]

    accs = spread([c.accuracy for c in cands], 0.0)
    lats = spread([c.latency_s for c in cands], float("inf"))
    downs = spread([c.downtime_s for c in cands], float("inf"))
    orders = list(itertools.permutations(("accuracy", "latency", "downtime")))
    return [Objectives(a, lat, d, p) for a, lat, d, p in itertools.product(accs, lats, downs, orders)]


def _selection_accuracy(rows: list[dict[str, Any]], grid: Any = _uniform_grid) -> tuple[float, int]:
    """Over a grid of objectives: does selecting on estimates pick what selecting on measurements picks?"""
    agree = total = 0
    for failed in sorted({r["failed_node"] for r in rows}):
        by_tech = {r["chosen"]: r for r in rows if r["failed_node"] == failed}  # pinned ones too: all options
        if len(by_tech) < 2:
            continue
        est = [
            Candidate(t, r["est_accuracy"], r["est_latency_ms"] / 1e3, r["est_downtime_s"]) for t, r in by_tech.items()
        ]
        meas = [Candidate(t, r["accuracy"], r["latency_ms"] / 1e3, r["downtime_s"]) for t, r in by_tech.items()]
        for obj in grid(est + meas):
            agree += select(est, obj).chosen.technique == select(meas, obj).chosen.technique
            total += 1
    return (agree / total if total else float("nan")), total


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"n{r['failed_node']}:{r['chosen']}" for r in rows]
    xs = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].bar(xs, [max(r["downtime_s"], 1e-6) for r in rows], color="tab:red")
    axes[0].set_yscale("log")
    axes[0].set_title("downtime of the switch (s)")
    w = 0.4
    axes[1].bar([x - w / 2 for x in xs], [r["est_accuracy"] for r in rows], w, label="estimated")
    axes[1].bar([x + w / 2 for x in xs], [r["accuracy"] for r in rows], w, label="measured")
    axes[1].set_ylim(min(r["accuracy"] for r in rows) - 0.05, 1.0)
    axes[1].set_title("accuracy after failover")
    axes[2].bar([x - w / 2 for x in xs], [r["est_latency_ms"] for r in rows], w, label="estimated")
    axes[2].bar([x + w / 2 for x in xs], [r["latency_ms"] for r in rows], w, label="measured")
    axes[2].set_title("latency per batch of 32 (ms)")
    for ax in axes:
        ax.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=8)
    axes[1].legend()
    fig.suptitle(f"failover: lost {sum(r['lost'] for r in rows)} of {sum(r['sent'] for r in rows)} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(NAME, argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    bundle, test = _bundle(cfg)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "secret").write_bytes(SECRET)
        cases = []
        for failed in cfg["failed_nodes"]:
            techniques = ["repartition"]
            techniques += [t for t in ("early_exit", "skip") if f"{t}:{failed}" in bundle.accuracy]
            cases += [(failed, t) for t in techniques]
        for failed, technique in tqdm(cases, desc="failover cases"):
            rows.append(_run_case(bundle, test, cfg, failed, technique, tmp))
    hidden = ("candidates", "errors", "objectives")
    print_table([{k: v for k, v in r.items() if k not in hidden} for r in rows], title="failover cases")
    cands = [Candidate("a", 0.9, 0.02, 0.5), Candidate("b", 0.8, 0.005, 1e-4), Candidate("c", 0.88, 0.018, 1e-4)]
    t1 = time.perf_counter()
    for _ in range(1000):
        select(cands, Objectives(max_downtime_s=0.1))
    select_only_ms = time.perf_counter() - t1  # 1000 calls: seconds * 1000 / 1000 = ms per call
    sel_acc, grid = _selection_accuracy(rows)
    sel_acc_adversarial, _ = _selection_accuracy(rows, _objective_grid)

    def mean(key: str, technique: str | None = None) -> float:
        vals = [r[key] for r in rows if technique is None or r["chosen"] == technique]
        return statistics.fmean(vals) if vals else float("nan")

    figures = {
        "requests_lost": sum(r["lost"] for r in rows),
        "answered_twice": sum(r["answered_twice"] for r in rows),
        "requests_sent": sum(r["sent"] for r in rows),
        "wrong_technique": sum(r["chosen"] != r["wanted"] for r in rows),
        "pinned_cases": sum(r["pinned"] for r in rows),
        "selection_ms": mean("selection_ms"),
        "select_only_ms": select_only_ms,
        "accuracy_estimation_error": statistics.fmean(abs(r["est_accuracy"] - r["accuracy"]) * 100 for r in rows),
        "latency_estimation_error": statistics.fmean(
            abs(r["est_latency_ms"] - r["latency_ms"]) / r["latency_ms"] * 100 for r in rows
        ),
        "downtime_estimation_error": statistics.fmean(
            [
                abs(r["est_downtime_s"] - r["downtime_s"]) / r["downtime_s"] * 100
                for r in rows
                if r["chosen"] == "repartition"
            ]
            or [float("nan")]
        ),
        "downtime_s_repartition": mean("downtime_s", "repartition"),
        "downtime_s_early_exit": mean("downtime_s", "early_exit"),
        "downtime_s_skip": mean("downtime_s", "skip"),
        "service_gap_s": mean("service_gap_s"),
        "accuracy_repartition": mean("accuracy", "repartition"),
        "accuracy_early_exit": mean("accuracy", "early_exit"),
        "accuracy_skip": mean("accuracy", "skip"),
        "latency_ms_repartition": mean("latency_ms", "repartition"),
        "latency_ms_early_exit": mean("latency_ms", "early_exit"),
        "latency_ms_skip": mean("latency_ms", "skip"),
        "selection_accuracy": sel_acc,
        "selection_accuracy_adversarial": sel_acc_adversarial,
    }
    _plot(rows, png_path(NAME, args))
    details = {
        "config": {**cfg, "cuts": list(CUTS), "model": "resnet18 width 8, failout p=0.3 on block 2"},
        "bundle_accuracy": bundle.accuracy,
        "selection_grid_size": grid,
        "cases": rows,
        "seconds": time.perf_counter() - t0,
        "units": {
            "accuracy_estimation_error": "mean |estimated - measured| accuracy, percentage points",
            "latency_estimation_error": "mean relative error, %",
            "selection_ms": "estimating every candidate + selecting, inside the controller",
            "selection_accuracy": "share of objectives (16 thresholds per objective evenly over the candidates'"
            " range, plus none; 6 priority orders) under which estimates and measurements select the same technique",
            "selection_accuracy_adversarial": "the same with a threshold between every pair of values, each estimate"
            " and its own measurement included",
        },
    }
    write_result(NAME, args, figures, details)


if __name__ == "__main__":
    main()
