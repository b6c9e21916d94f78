"""Benchmark ``split``: what split training over the offload channel costs, and round time per split point.

* ``split_vs_local_ratio``: per-batch time of split training (VGG5 cut after conv2, ``k = 3``; batch 64; real gRPC
  on loopback, no emulated delay) over local training of the whole model on the same batches.
* ``split_vs_bound_ratio``: the same split per-batch time over the bound of any exact (float32) split path:
  ``local per-batch time + (bytes up + bytes down per batch at k = 3) / channel throughput``. Device and edge
  compute add up to the local compute (one CPU), and every byte has to cross the channel once. Each term is the best
  measured (fastest of the repeats, as the per-batch times are): the throughput is ``channel_best_mb_s``, the
  fastest of the ``k = 1`` round trips below.
* ``rtt_ms``: per-batch round trip of the channel at that split (step wall time minus the server's time on it;
  median).
* ``channel_mb_s``: channel throughput with large activations (``k = 1``: 6.4 MB up and 6.4 MB down per batch;
  median round trip).
* ``split_vs_local_ratio_bf16`` / ``split_vs_local_ratio_int8``: ``split_vs_local_ratio`` with ``wire-dtype``
  ``bfloat16`` / ``int8`` (activations up and gradients down compressed; :mod:`edgeflower.transport.wire`).
* ``accuracy_delta_bf16`` / ``accuracy_delta_int8`` / ``accuracy_delta_int8_channel``: test accuracy (points,
  Fashion-MNIST test set) after 5 rounds of split training (``k = 3``) of 4 nodes (IID partitions, at most 20
  batches of 64 per node and round, FedAvg weighted by samples) with that wire format, minus the float32 run's
  (the same initial model, batches and order); ``accuracy_float32`` is that run's accuracy. An in-process loop over
  the trainers and one edge server (no Flower engine: only the wire format differs between the runs).
* round time per split point at two emulated bandwidths (table and PNG).
"""

from __future__ import annotations

import copy
import time

import torch
from tqdm import tqdm

from benchmarks._harness import OPT, SECRET, edge_server, run_local, run_split
from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset, partition
from edgeflower.device.split import SplitTrainer
from edgeflower.models import build_model
from edgeflower.models.splittable import SplittableModel
from edgeflower.training import evaluate
from edgeflower.transport import EdgeClient, TokenIssuer
from edgeflower.transport.emulation import LinkProfile

ACCURACY_WIRES = ("float32", "bfloat16", "int8", "int8-channel")
"""The wire formats of the accuracy runs (float32 first: the reference)."""


def _rtt(server, model, batch, k: int, repeats: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    """(Sorted round trips in s, bytes per step both ways) of ``session.step`` beyond the server's own time."""
    head, tail = model.split(k)
    token = TokenIssuer(SECRET).issue(run_id=1, node_id=9, server_round=1)
    x, y = batch
    with torch.no_grad():
        act = head(x)
    rtts = []
    with EdgeClient(server.address) as client:
        session = client.open_session(token, model.spec, k, tail.state_dict(), OPT)
        for b in range(repeats):
            t0 = time.perf_counter()
            result = session.step(act, y, batch=b, batch_size=len(y))
            rtts.append(time.perf_counter() - t0 - result.server_s)
        session.close()
    nbytes = act.numel() * 4 * 2 + y.numel() * 8
    return sorted(rtts), nbytes


def _fedavg(states: list[dict[str, torch.Tensor]], sizes: list[int]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean of the floating-point entries (counters: the first node's)."""
    total = sum(sizes)
    return {
        key: sum(st[key] * (n / total) for st, n in zip(states, sizes, strict=True))  # type: ignore[misc]
        if first.is_floating_point()
        else first
        for key, first in states[0].items()
    }


def _accuracy_run(
    server, initial: SplittableModel, wire: str, run_id: int, rounds: int, nodes: int, max_batches: int, test_n: int
) -> float:  # type: ignore[no-untyped-def]
    """Test accuracy after ``rounds`` rounds of split training (``k = 3``) of ``nodes`` nodes with ``wire``."""
    train = load_dataset("fashion-mnist")
    test = load_dataset("fashion-mnist", train=False)
    test = test.subset(range(min(test_n, len(test))))
    parts = partition(train.y.numpy(), nodes, "iid", seed=0)
    model = copy.deepcopy(initial)
    with EdgeClient(server.address, wire_dtype=wire) as client:
        for rnd in range(1, rounds + 1):
            states, sizes = [], []
            for node, idx in enumerate(parts):
                local = copy.deepcopy(model)
                batches = list(BatchLoader(train.subset(idx), 64, seed=rnd, max_batches=max_batches).batches(0))
                token = TokenIssuer(SECRET).issue(run_id=run_id, node_id=node + 1, server_round=rnd)

                def opener(k, tail, opt, token=token, local=local):  # type: ignore[no-untyped-def]
                    return client.open_session(token, local.spec, k, tail, opt)

                result = SplitTrainer(local, 3, OPT).train(batches, opener)
                if result.fell_back:
                    raise RuntimeError(f"accuracy run ({wire}) fell back: {result.fallback_reason}")
                states.append(local.state_dict())
                sizes.append(result.num_examples)
            model.load_state_dict(_fedavg(states, sizes))
    with torch.no_grad():
        return evaluate(model, test)[1]


def accuracy_deltas(server, quick: bool) -> tuple[dict[str, float], list[dict]]:  # type: ignore[no-untyped-def]
    """Accuracy (points) of each compressed wire format after the rounds, minus float32's."""
    rounds, nodes, max_batches, test_n = (1, 2, 1, 500) if quick else (5, 4, 20, 10_000)
    torch.manual_seed(1)
    initial = build_model("vgg5")
    acc = {}
    for i, wire in enumerate(tqdm(ACCURACY_WIRES, desc="accuracy per wire format")):
        acc[wire] = _accuracy_run(server, initial, wire, 100 + i, rounds, nodes, max_batches, test_n)
    rows = [{"wire": w, "accuracy": a, "delta_points": (a - acc["float32"]) * 100} for w, a in acc.items()]
    figures = {"accuracy_float32": acc["float32"]}
    figures.update(
        {
            f"accuracy_delta_{r['wire'].replace('-', '_').replace('bfloat16', 'bf16')}": r["delta_points"]
            for r in rows[1:]
        }
    )
    return figures, rows


def main() -> None:
    args = parse_args("split")
    n_batches, repeats = (1, 3) if args.quick else (30, 40)
    bandwidths = [1000.0] if args.quick else [10.0, 100.0]
    torch.manual_seed(0)
    model = build_model("vgg5")
    data = load_dataset("fashion-mnist").subset(range(64 * n_batches))
    batches = list(BatchLoader(data, 64, seed=0).batches(0))
    with edge_server() as server:
        local, split, bf16, int8 = [], [], [], []
        for _ in tqdm(range(1 if args.quick else 3), desc="split vs local"):  # interleaved: load drifts alike
            local.append(run_local(model, batches).per_batch_s)
            split.append(run_split(server, model, batches, 3).per_batch_s)
            bf16.append(run_split(server, model, batches, 3, wire="bfloat16").per_batch_s)
            int8.append(run_split(server, model, batches, 3, wire="int8").per_batch_s)
        rtts, k3_bytes = _rtt(server, model, batches[0], 3, repeats)
        big_rtts, big_bytes = _rtt(server, model, batches[0], 1, repeats)
        acc_figures, acc_rows = accuracy_deltas(server, args.quick)
        sweep = []
        round_batches = batches[: 1 if args.quick else 10]
        for mbps in bandwidths:
            link = LinkProfile(mbps, mbps, latency_ms=5)
            for k in tqdm(range(model.num_blocks + 1), desc=f"split points at {mbps:g} Mbit/s"):
                if k == model.num_blocks:
                    t = run_local(model, round_batches).seconds
                else:
                    t = run_split(server, model, round_batches, k, link=link).seconds
                sweep.append({"mbps": mbps, "split_point": k, "round_s": t})
    print_table(sweep, title=f"round time per split point ({len(round_batches)} batches of 64, VGG5)")
    print_table(acc_rows, title="test accuracy per wire format")
    throughput = big_bytes / big_rtts[len(big_rtts) // 2]  # median: channel_mb_s
    best = big_bytes / big_rtts[0]  # the bound takes the best of each term, as the per-batch times do
    bound_s = min(local) + k3_bytes / best
    figures = {
        "split_vs_local_ratio": min(split) / min(local),
        "split_vs_bound_ratio": min(split) / bound_s,
        "split_vs_local_ratio_bf16": min(bf16) / min(local),
        "split_vs_local_ratio_int8": min(int8) / min(local),
        **acc_figures,
        "rtt_ms": rtts[len(rtts) // 2] * 1000,
        "channel_mb_s": throughput / 1e6,
        "channel_best_mb_s": best / 1e6,
        "local_batch_ms": min(local) * 1000,
        "split_batch_ms": min(split) * 1000,
        "bound_batch_ms": bound_s * 1000,
        "split_batch_ms_bf16": min(bf16) * 1000,
        "split_batch_ms_int8": min(int8) * 1000,
        "bytes_per_batch_k3": k3_bytes,
        **{
            f"best_split_point_{mbps:g}mbps": min((r for r in sweep if r["mbps"] == mbps), key=lambda r: r["round_s"])[
                "split_point"
            ]
            for mbps in bandwidths
        },
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].bar(
        ["local", "bound", "split", "split bf16", "split int8"],
        [min(local) * 1000, bound_s * 1000, min(split) * 1000, min(bf16) * 1000, min(int8) * 1000],
        color=["#999", "#bbb", "#37c", "#5a5", "#c73"],
    )
    axes[0].set(title="per-batch time, VGG5 k=3, batch 64, loopback", ylabel="ms")
    for mbps in bandwidths:
        rows = [r for r in sweep if r["mbps"] == mbps]
        axes[1].plot(
            [r["split_point"] for r in rows], [r["round_s"] for r in rows], marker="o", label=f"{mbps:g} Mbit/s"
        )
    axes[1].set(title="round time per split point (k = 7: no offloading)", xlabel="split point k", ylabel="s")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path("split", args), dpi=110)
    write_result("split", args, figures, {"sweep": sweep, "batches": n_batches, "accuracy": acc_rows})


if __name__ == "__main__":
    main()
