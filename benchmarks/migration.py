"""Benchmark ``migration``: FedFly's migration of the server-side state vs restarting the round (the baseline).

One device (VGG5 on Fashion-MNIST, FedFly's split after conv2 + pool, ``k = 4``; batch 64; ``--quick``: batch 16,
width 0.25; device 4x slower than this machine; 50 Mbit/s link) trains a round against edge server A and moves to
edge server B when 50 % or 90 % of the round is done: ``migrate`` moves the tail, optimizer and progress edge to
edge (over an emulated 100 Mbit/s edge-to-edge link, so the round times include the transfer), ``restart`` discards
them and restarts the round on B. Then the migration overhead is compared with its physical bound at three
edge-to-edge bandwidths (10, 100 and 1000 Mbit/s; ``--quick``: 100 only).

* **Overhead**: the device-visible time of one move (the node's ``migration-s``): from the device detaching its
  training stream on A to its handle on B, i.e. detach, the ``Migrate`` call, export and seal on A, the transfer
  over the emulated edge-to-edge link, the import on B (unseal, checks, rebuilding the tail and its optimizer) and
  the acknowledgement relayed back. Measured ``REPEATS`` times per bandwidth (a short round that moves before its
  second batch: the state, tail weights plus momentum, has its full size after the first batch); the median counts.
* **Bound**: ``state bytes * 8 / bandwidth``, the time the emulated edge-to-edge link needs to carry the exported
  state (the ``session_state`` frame the link is charged for). That link has no latency (its profile sets none),
  so the bound has none either; no move can cost the device less than the state's time on the wire.

Figures: ``time_saved_vs_restart_50`` and ``time_saved_vs_restart_90`` (1 - migrated round time / restarted round
time), ``migration_overhead_s`` (median overhead at 100 Mbit/s edge to edge), ``overhead_vs_bound_ratio`` (median
overhead / bound, the largest over the bandwidths measured; 1.0 is the physical limit), ``accuracy_delta_vs_no_move``
(test accuracy after the moved round minus after the unmoved one; the larger in magnitude of the moves at 50 % and
90 %), ``state_mb``.
"""

from __future__ import annotations

import copy
import statistics

import torch
from tqdm import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.device.mobility import MoveOrder
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.sessions import EdgeSessions
from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.models import build_model
from edgeflower.training import evaluate
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, LinkProfile

SECRET = b"edgeflower-migration-benchmark-secret-01"
OPT = OptimizerSettings(lr=0.01, momentum=0.9)
K = 4
PEER_MBPS = 100.0
REPEATS = 5  # moves per bandwidth for the overhead (--quick: 1); the median counts


def _round(model, batches, a: EdgeServer, order: MoveOrder | None, node: int):  # type: ignore[no-untyped-def]
    issuer = TokenIssuer(SECRET)
    token = issuer.issue(1, node, 1, a.edge_id)
    with EdgeClient(a.address) as client:
        sessions = EdgeSessions(client, token, model.spec)
        link = EmulatedLink(LinkProfile(50, 50, 2))
        trainer = PipelineTrainer(model, K, OPT, 1, DeviceProfile(4.0), link, open_session=sessions, move_order=order)
        return trainer.train(batches)


def main() -> None:
    args = parse_args("migration")
    n_batches, batch = (3, 16) if args.quick else (30, 64)
    torch.manual_seed(0)
    # --quick: a narrow VGG5 (width 0.25: 0.12 MB of weights instead of 1.8 MB to send over the emulated links)
    initial = build_model("vgg5", **({"width": 0.25} if args.quick else {}))
    data = load_dataset("fashion-mnist").subset(range(batch * n_batches))
    test = load_dataset("fashion-mnist", train=False).subset(range(200 if args.quick else 10000))
    batches = list(BatchLoader(data, batch, seed=0).batches(0))
    issuer = TokenIssuer(SECRET)
    rows = []
    node = 0
    peer = EdgeServerConfig(peer_link_mbps=PEER_MBPS)
    with EdgeServer(secret=SECRET, edge_id="a", config=peer) as a, EdgeServer(secret=SECRET, edge_id="b") as b:
        unmoved = copy.deepcopy(initial)
        base = _round(unmoved, batches, a, None, node := node + 1)
        rows.append({"case": "no move", "at": "-", "round_s": base.seconds})
        acc_unmoved = evaluate(unmoved, test)[1]
        results = {}
        for frac in tqdm((0.5, 0.9), desc="move at 50 % / 90 %"):
            at = int(frac * n_batches)
            for mode in ("migrate", "restart"):
                model = copy.deepcopy(initial)
                node += 1
                order = MoveOrder(at, b.address, issuer.issue(1, node, 1, "b", role="migration"), mode)
                res = _round(model, batches, a, order, node)
                results[(frac, mode)] = (res.seconds, model)
                rows.append({"case": mode, "at": f"{frac:.0%}", "round_s": res.seconds})
        acc_moved = [evaluate(results[(frac, "migrate")][1], test)[1] for frac in (0.5, 0.9)]
    title = f"round time, {n_batches} x {batch} samples, device 4x slower, 50 Mbit/s, {PEER_MBPS:g} Mbit/s edge-edge"
    print_table(rows, title=title)

    overhead_rows = []
    repeats = 1 if args.quick else REPEATS
    for mbps in tqdm((100.0,) if args.quick else (10.0, 100.0, 1000.0), desc="edge-to-edge bandwidths"):
        cfg = EdgeServerConfig(peer_link_mbps=mbps)
        moves = []
        with EdgeServer(secret=SECRET, edge_id="a", config=cfg) as a, EdgeServer(secret=SECRET, edge_id="b") as b:
            for _ in range(repeats):
                node += 1
                order = MoveOrder(1, b.address, issuer.issue(1, node, 1, "b", role="migration"), "migrate")
                _round(copy.deepcopy(initial), batches[:2], a, order, node)
                moves.append(order.report)
        state_bytes = moves[-1]["migration-bytes"]
        bound = state_bytes * 8 / (mbps * 1e6)
        overhead = statistics.median(m["migration-s"] for m in moves)
        overhead_rows.append(
            {"edge_mbps": mbps, "state_mb": state_bytes / 1e6, "overhead_s": overhead, "bound_s": bound,
             "ratio": overhead / bound, "moves_s": [m["migration-s"] for m in moves]}
        )  # fmt: skip
    print_table(
        [{k: v for k, v in r.items() if k != "moves_s"} for r in overhead_rows],
        title=f"migration overhead (median of {repeats}) vs physical bound (state bytes / edge-to-edge bandwidth)",
    )
    t = {key: v[0] for key, v in results.items()}
    figures = {
        "time_saved_vs_restart_50": 1 - t[(0.5, "migrate")] / t[(0.5, "restart")],
        "time_saved_vs_restart_90": 1 - t[(0.9, "migrate")] / t[(0.9, "restart")],
        "migration_overhead_s": next(r["overhead_s"] for r in overhead_rows if r["edge_mbps"] == 100.0),
        "overhead_vs_bound_ratio": max(r["ratio"] for r in overhead_rows),
        "accuracy_delta_vs_no_move": max((acc - acc_unmoved for acc in acc_moved), key=abs),
        "state_mb": overhead_rows[0]["state_mb"],
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = ["no move", "migrate 50%", "restart 50%", "migrate 90%", "restart 90%"]
    values = [base.seconds, t[(0.5, "migrate")], t[(0.5, "restart")], t[(0.9, "migrate")], t[(0.9, "restart")]]
    axes[0].bar(labels, values, color=["#999", "#2a7", "#d73", "#2a7", "#d73"])
    axes[0].set(title="round time", ylabel="s")
    axes[0].tick_params(axis="x", rotation=20)
    axes[1].plot(
        [r["edge_mbps"] for r in overhead_rows],
        [r["overhead_s"] for r in overhead_rows],
        marker="o",
        label="measured overhead",
    )
    axes[1].plot(
        [r["edge_mbps"] for r in overhead_rows],
        [r["bound_s"] for r in overhead_rows],
        marker="x",
        label="bound: bytes / bandwidth",
    )
    axes[1].set(xscale="log", yscale="log", title="migration overhead", xlabel="edge-to-edge Mbit/s", ylabel="s")
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path("migration", args), dpi=110)
    write_result("migration", args, figures, {"rounds": rows, "overhead": overhead_rows, "batches": n_batches})


if __name__ == "__main__":
    main()
