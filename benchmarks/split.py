"""Benchmark ``split``: what split training over the offload channel costs, and round time per split point.

* ``split_vs_local_ratio``: per-batch time of split training (VGG5 cut after conv2, ``k = 3``; batch 64; real gRPC
  on loopback, no emulated delay) over local training of the whole model on the same batches.
* ``rtt_ms``: per-batch round trip of the channel at that split (step wall time minus the server's time on it).
* ``channel_mb_s``: channel throughput with large activations (``k = 1``: 6.4 MB up and 6.4 MB down per batch).
* round time per split point at two emulated bandwidths (table and PNG).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from benchmarks._harness import OPT, SECRET, edge_server, run_local, run_split
from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.models import build_model
from edgeflower.transport import EdgeClient, TokenIssuer
from edgeflower.transport.emulation import LinkProfile


def _rtt(server, model, batch, k: int, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median (round trip s, bytes per step both ways) of ``session.step`` beyond the server's own time."""
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
    return sorted(rtts)[len(rtts) // 2], nbytes


def main() -> None:
    args = parse_args("split")
    n_batches, repeats = (1, 3) if args.quick else (30, 40)
    bandwidths = [1000.0] if args.quick else [10.0, 100.0]
    torch.manual_seed(0)
    model = build_model("vgg5")
    data = load_dataset("fashion-mnist").subset(range(64 * n_batches))
    batches = list(BatchLoader(data, 64, seed=0).batches(0))
    with edge_server() as server:
        local, split = [], []
        for _ in tqdm(range(1 if args.quick else 3), desc="split vs local"):
            local.append(run_local(model, batches).per_batch_s)
            split.append(run_split(server, model, batches, 3).per_batch_s)
        rtt_s, _ = _rtt(server, model, batches[0], 3, repeats)
        big_rtt_s, big_bytes = _rtt(server, model, batches[0], 1, repeats)
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
    figures = {
        "split_vs_local_ratio": min(split) / min(local),
        "rtt_ms": rtt_s * 1000,
        "channel_mb_s": big_bytes / big_rtt_s / 1e6,
        "local_batch_ms": min(local) * 1000,
        "split_batch_ms": min(split) * 1000,
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
    axes[0].bar(["local", "split (k=3)"], [min(local) * 1000, min(split) * 1000], color=["#999", "#37c"])
    axes[0].set(title="per-batch time, VGG5, batch 64, loopback", ylabel="ms")
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
    write_result("split", args, figures, {"sweep": sweep, "batches": n_batches})


if __name__ == "__main__":
    main()
