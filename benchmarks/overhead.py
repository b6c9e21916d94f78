"""Benchmark ``overhead``: what edgeflower costs on top of plain PyTorch and of a Flower round.

* ``fl_vs_plain_ratio``: one epoch of edgeflower's client training (``train_local`` over a seeded
  ``BatchLoader``) divided by a plain PyTorch loop (``DataLoader`` over a ``TensorDataset``) on the same model
  initialisation, data and seed; best of several alternating repeats.
* ``round_overhead_s``: in ``flwr run .`` (Simulation Engine, 2 SuperNodes), a round's wall time minus the slowest
  node's training compute: the cost of Flower messaging, model (de)serialisation and aggregation per round.
* ``emulation_timing_error``: how late the link emulator's sleeps end on this machine. Messages sent over an
  emulated 8 Mbit/s, 20 ms link (``EmulatedLink.transmit``), measured wall time against the modelled transfer
  time: median relative error, % (``emulation_timing_error_max`` the worst). The tests check the emulator's model
  on a manual clock; this is what the model costs in real time.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.flwrctl import run_simulation
from edgeflower.models import build_model
from edgeflower.runlog import run_folder
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport.emulation import EmulatedLink, LinkProfile

ROOT = Path(__file__).resolve().parents[1]


def _plain_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    loader = DataLoader(
        TensorDataset(x, y), batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
    return time.perf_counter() - t0


def _edge_epoch(model: nn.Module, data, seed: int) -> float:  # type: ignore[no-untyped-def]
    opt = make_optimizer(model.parameters(), 0.01, 0.9)
    return train_local(model, BatchLoader(data, 100, seed=seed).batches(0), opt).seconds


def _emulation_errors(messages: int) -> list[float]:
    """Relative error of real transfers over an emulated link against the modelled time (sleeps end late)."""
    link = EmulatedLink(LinkProfile(uplink_mbps=8.0, downlink_mbps=8.0, latency_ms=20))
    errors = []
    for i in range(messages):
        nbytes = 10_000 * (1 + i % 5)  # 10-50 kB: 10-50 ms on the wire
        want = link.profile.transfer_s(nbytes, up=True) + 0.020
        t0 = time.perf_counter()
        link.transmit(nbytes, up=True)
        errors.append((time.perf_counter() - t0 - want) / want)
    return errors


def main() -> None:
    args = parse_args("overhead")
    samples, repeats, rounds = (200, 1, 2) if args.quick else (15000, 3, 4)
    data = load_dataset("fashion-mnist").subset(range(samples))
    torch.manual_seed(0)
    init = build_model("vgg5").state_dict()
    plain, edge = [], []
    for r in tqdm(range(repeats), desc="epochs (plain vs edgeflower)"):
        for runner, out in ((_plain_epoch, plain), (_edge_epoch, edge)):
            model = build_model("vgg5")
            model.load_state_dict(init)
            out.append(runner(model, data.x, data.y, r) if runner is _plain_epoch else runner(model, data, r))
    epoch_rows = [{"loop": "plain PyTorch", "best_s": min(plain)}, {"loop": "edgeflower client", "best_s": min(edge)}]
    print_table(epoch_rows, title=f"one epoch of VGG5 on {samples} Fashion-MNIST samples, batch 100")

    emulation = sorted(_emulation_errors(5 if args.quick else 50))
    print(f"emulated link: median error {emulation[len(emulation) // 2]:.1%}, worst {emulation[-1]:.1%}")

    # --quick: 2 rounds (the second is the steady one) of a few batches of a narrow model, both SuperNodes served by
    # one ClientApp actor (Ray given one CPU, as in the end-to-end tests): a second actor would only import torch,
    # Flower and the app once more
    max_batches, eval_samples = (3, 200) if args.quick else (20, 1000)
    narrow = {"model-width": 0.25} if args.quick else {}
    actors = {"ray_num_cpus": 1} if args.quick else {}
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_simulation(
            ROOT,
            Path(tmp) / "flwr-home",
            num_supernodes=2,
            run_config={
                "num-rounds": rounds,
                "max-batches": max_batches,
                "eval-samples": eval_samples,
                "run-dir": tmp,
                **narrow,
            },
            timeout=600,
            poll_interval=1.0 if args.quick else 3.0,
            **actors,
        )
        if not outcome.ok:
            raise SystemExit(f"simulation failed: {outcome.status} {outcome.details}")
        run = run_folder(tmp, outcome.run_id)
        rows = json.loads((run / "metrics.json").read_text())
        nodes = json.loads((run / "nodes.json").read_text())
    round_rows = []
    for row in rows:
        if row["round"] == 0:
            continue
        compute = max(float(m["train-time-s"]) for m in nodes[str(row["round"])].values())
        round_rows.append(
            {
                "round": row["round"],
                "round_s": row["round-time-s"],
                "max_compute_s": compute,
                "overhead_s": row["round-time-s"] - compute,
            }
        )
    print_table(round_rows, title=f"Flower simulation rounds (2 SuperNodes, {max_batches} batches each)")
    steady = [r["overhead_s"] for r in round_rows[1:]] or [r["overhead_s"] for r in round_rows]
    figures = {
        "fl_vs_plain_ratio": min(edge) / min(plain),
        "round_overhead_s": sum(steady) / len(steady),
        "plain_epoch_s": min(plain),
        "edgeflower_epoch_s": min(edge),
        "emulation_timing_error": emulation[len(emulation) // 2] * 100,
        "emulation_timing_error_max": emulation[-1] * 100,
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar(["plain PyTorch", "edgeflower"], [min(plain), min(edge)], color=["#999", "#2a7"])
    axes[0].set(title=f"one epoch, {samples} samples", ylabel="s")
    axes[1].bar(
        [r["round"] for r in round_rows], [r["max_compute_s"] for r in round_rows], label="slowest node compute"
    )
    axes[1].bar(
        [r["round"] for r in round_rows],
        [r["overhead_s"] for r in round_rows],
        bottom=[r["max_compute_s"] for r in round_rows],
        label="Flower round overhead",
    )
    axes[1].set(title="simulation round time", xlabel="round", ylabel="s")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(png_path("overhead", args), dpi=110)
    write_result("overhead", args, figures, {"epochs": epoch_rows, "rounds": round_rows, "samples": samples})


if __name__ == "__main__":
    main()
