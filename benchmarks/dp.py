"""Benchmark ``dp``: the cost and the utility of DP-SGD, and the accuracy of our privacy accounting.

* ``dp_overhead_ratio_fl`` / ``_split`` / ``_pipeline``: time of one local epoch with DP-SGD (Opacus per-sample
  gradients, clipping, noise; ``dp = device``) over the same epoch without DP, on the same model initialisation and
  batches; split modes run against an in-process edge server (``_full``: the edge server's tail private too; the
  pipelined DP head recomputes its forward pass per micro-batch, see :mod:`edgeflower.clients.pipeline`).
  Best of several alternating repeats.
* ``epsilon_abs_error_vs_opacus``: the largest absolute difference between the cumulative epsilon our nodes report
  (history in ``context.state``, several rounds) and an independent ``opacus.accountants.RDPAccountant`` stepped
  once per step, over a grid of noise multipliers, sample rates and rounds.
* ``accuracy_at_eps``: federated training (FedAvg over 2 nodes, classic FL, Poisson sampling, noise calibrated from
  the target epsilon over the planned rounds) for N rounds at three target epsilons (delta 1e-5) plus the non-DP
  baseline; test accuracy on Fashion-MNIST.
"""

from __future__ import annotations

import copy
import itertools
import math
import time

import torch
from flwr.app import RecordDict
from opacus.accountants import RDPAccountant
from torch import nn
from tqdm import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.clients.local import evaluate, make_optimizer, train_local
from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.data import BatchLoader, load_dataset, partition
from edgeflower.models import build_model
from edgeflower.privacy.accounting import PrivacyHistory
from edgeflower.privacy.dpsgd import DeviceDP
from edgeflower.privacy.node import NodeRoundDP
from edgeflower.privacy.remote import open_private_session
from edgeflower.privacy.settings import DPSettings
from edgeflower.server.edge import EdgeServer
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.messages import DPParams

SECRET = b"benchmark-dp-secret-0123456789abcdef"
DELTA = 1e-5
B = 100


def _model(width: float) -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg5", norm="group", width=width)


def _epoch(mode: str, dp: str, width: float, batches: list, edge: EdgeServer | None) -> float:
    model = _model(width)
    device = DeviceDP(1.0, 1.0, B, 0.01, torch.Generator().manual_seed(1)) if dp != "off" else None
    if mode == "fl":
        opt: torch.optim.Optimizer = make_optimizer(model.parameters(), 0.05, 0.9)
        hooks = None
        if device is not None:
            opt, hooks, _ = device.wrap(model, opt)
        t0 = time.perf_counter()
        train_local(model, batches, opt)
        seconds = time.perf_counter() - t0
        if hooks is not None:
            hooks.remove_hooks()
        return seconds
    assert edge is not None
    tail_dp = DPParams(1.0, 1.0, B, 0.01, DELTA, 2) if dp == "full" else None
    m = 4 if mode == "pipeline" else 1
    trainer = PipelineTrainer(model, 3, OptimizerSettings(0.05, 0.9), m, dp=device)
    with EdgeClient(edge.address) as client:
        token = TokenIssuer(SECRET).issue(run_id=1, node_id=1, server_round=1)

        def opener(k, tail, opt):  # type: ignore[no-untyped-def]
            if tail_dp is None:
                return client.open_session(token, model.spec, k, tail, opt)
            return open_private_session(client, token, model.spec, k, tail, opt, tail_dp, m)

        result = trainer.train(batches, opener)
    assert not result.fell_back
    return result.seconds


def overhead(samples: int, width: float, repeats: int) -> tuple[dict[str, float], list[dict]]:
    data = load_dataset("fashion-mnist").subset(range(samples))
    batches = list(BatchLoader(data, B, seed=0).batches(0))
    rows, figures = [], {}
    with EdgeServer(secret=SECRET) as edge:
        cases = [("fl", "device"), ("split", "device"), ("split", "full"), ("pipeline", "device"), ("pipeline", "full")]
        for mode, dp in tqdm(cases, desc="DP overhead"):
            plain, private = [], []
            for _ in range(repeats):
                plain.append(_epoch(mode, "off", width, batches, edge))
                private.append(_epoch(mode, dp, width, batches, edge))
            ratio = min(private) / min(plain)
            suffix = "" if dp == "device" else "_full"
            figures[f"dp_overhead_ratio_{mode}{suffix}"] = ratio
            rows.append({"mode": mode, "dp": dp, "plain_s": min(plain), "dp_s": min(private), "ratio": ratio})
    return figures, rows


def epsilon_error() -> float:
    """Largest |our cumulative epsilon - independent Opacus accountant| over a grid of settings."""
    worst = 0.0
    for noise, (n, batch), rounds in itertools.product((0.6, 1.0, 2.0), ((600, 32), (6000, 100)), (1, 3, 5)):
        settings = DPSettings("device", noise, 1.0, 0.0, DELTA)
        state = RecordDict()
        independent = RDPAccountant()
        reported = 0.0
        for _ in range(rounds):
            node = NodeRoundDP(settings, state, n, batch, 1, 0, rounds, split=False)
            node.history.add(node.noise_multiplier, node.sample_rate, node.steps)
            node.history.save(state)
            reported = PrivacyHistory.load(state).epsilon(DELTA)
            for _ in range(node.steps):
                independent.step(noise_multiplier=noise, sample_rate=node.sample_rate)
        worst = max(worst, abs(reported - independent.get_epsilon(DELTA)))
    return worst


def accuracy(targets: list[float], rounds: int, per_node: int, width: float, eval_samples: int) -> list[dict]:
    train = load_dataset("fashion-mnist")
    test = load_dataset("fashion-mnist", train=False).subset(range(eval_samples))
    parts = partition(train.y.numpy(), 10, "iid", seed=0)[:2]
    nodes = [train.subset(p[:per_node]) for p in parts]
    rows = []
    for target in tqdm([0.0, *targets], desc="accuracy at epsilon"):
        settings = DPSettings("device", 0.0, 1.0, target, DELTA) if target else None
        states = [RecordDict() for _ in nodes]
        global_model = _model(width)
        eps, noise = 0.0, 0.0
        for rnd in range(1, rounds + 1):
            updates = []
            for i, data in enumerate(nodes):
                model = copy.deepcopy(global_model)
                opt: torch.optim.Optimizer = make_optimizer(model.parameters(), 0.05, 0.9)
                if settings is None:
                    train_local(model, BatchLoader(data, B, seed=rnd * 10 + i).batches(0), opt)
                else:
                    node = NodeRoundDP(settings, states[i], len(data), B, 1, 0, rounds, split=False)
                    opt, hooks, _ = node.device().wrap(model, opt)
                    train_local(model, node.batches(data.x, data.y, rnd * 10 + i), opt)
                    hooks.remove_hooks()
                    eps = max(eps, node.finish()["dp-epsilon"])
                    noise = node.noise_multiplier
                updates.append(model.state_dict())
            global_model.load_state_dict({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]})
        _, acc = evaluate(global_model, test)
        rows.append(
            {
                "target_epsilon": target or float("inf"),
                "epsilon_spent": eps if settings else float("inf"),
                "noise_multiplier": noise,
                "rounds": rounds,
                "test_accuracy": acc,
            }
        )
    return rows


def _finite(value: float) -> float | None:
    """``None`` for infinity (strict JSON has no Infinity)."""
    return None if isinstance(value, float) and math.isinf(value) else value


def main() -> None:
    args = parse_args("dp")
    torch.manual_seed(0)
    if args.quick:
        samples, width, repeats = 200, 0.25, 1
        targets, rounds, per_node, eval_samples = [1.0, 4.0, 8.0], 1, 200, 200
    else:
        samples, width, repeats = 3000, 1.0, 2
        targets, rounds, per_node, eval_samples = [1.0, 3.0, 8.0], 5, 3000, 10000
    figures, overhead_rows = overhead(samples, width, repeats)
    print_table(overhead_rows, title="DP overhead (one local epoch, DP over non-DP)")
    figures["epsilon_abs_error_vs_opacus"] = epsilon_error()
    acc_rows = accuracy(targets, rounds, per_node, width, eval_samples)
    print_table(acc_rows, title=f"accuracy after {rounds} rounds (FedAvg, 2 nodes, delta {DELTA:g})")
    figures["accuracy_at_eps"] = [  # epsilon None = the non-DP baseline
        {"epsilon": _finite(r["target_epsilon"]), "spent": _finite(r["epsilon_spent"]), "accuracy": r["test_accuracy"]}
        for r in acc_rows
    ]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar([f"{r['mode']}\n{r['dp']}" for r in overhead_rows], [r["ratio"] for r in overhead_rows], color="tab:blue")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_ylabel("epoch time, DP / non-DP")
    ax1.set_title("DP-SGD overhead")
    dp_rows = [r for r in acc_rows if r["target_epsilon"] != float("inf")]
    ax2.plot([r["epsilon_spent"] for r in dp_rows], [100 * r["test_accuracy"] for r in dp_rows], "o-", label="DP-SGD")
    ax2.axhline(100 * acc_rows[0]["test_accuracy"], color="grey", ls="--", label="no DP")
    ax2.set_xlabel(f"epsilon spent (delta {DELTA:g})")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title(f"accuracy after {rounds} rounds")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png_path("dp", args), dpi=120)
    write_result(
        "dp",
        args,
        figures,
        {
            "overhead": overhead_rows,
            "accuracy": [{k: _finite(v) for k, v in r.items()} for r in acc_rows],
            "samples": samples,
            "width": width,
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
