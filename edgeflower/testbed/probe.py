"""One device's split or pipelined training pass against an edge server, timed: the fidelity probe.

``python -m edgeflower.testbed.probe --address HOST:PORT --secret-file S [--root-cert C] --mode split ...`` trains
real Fashion-MNIST batches through :class:`~edgeflower.clients.pipeline.PipelineTrainer` (the ClientApp's trainer)
with the link emulated in code (``--mbps``/``--latency-ms``) or not at all (``--mbps 0``: on the testbed the kernel
shapes it) and prints one JSON line: round seconds, per-batch seconds, bytes, whether it fell back and the trained
model's L1 norm (to compare a faulted pass with an unfaulted one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.data import BatchLoader, load_dataset
from edgeflower.models.zoo import build_model
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.auth import load_secret
from edgeflower.transport.emulation import EmulatedLink, LinkProfile

__all__ = ["main", "probe"]


def probe(
    address: str,
    secret: bytes,
    root_cert: bytes | None,
    mode: str,
    mbps: float,
    latency_ms: float = 0.0,
    batches: int = 10,
    batch_size: int = 64,
    split_point: int = 3,
    micro_batches: int = 4,
    width: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``batches`` batches split at ``split_point`` (pipelined with ``micro_batches`` in ``pipeline`` mode)
    against the edge server at ``address``; return the timings."""
    torch.manual_seed(seed)
    model = build_model("vgg5", norm="group", **({"width": width} if width != 1.0 else {}))
    data = load_dataset("fashion-mnist", train=False).subset(range(batch_size * batches))
    loader = list(BatchLoader(data, batch_size, seed=seed).batches(0))
    m = micro_batches if mode == "pipeline" else 1
    link = EmulatedLink(LinkProfile(mbps, mbps, latency_ms))
    opt = OptimizerSettings(lr=0.01, momentum=0.9)
    trainer = PipelineTrainer(model, split_point, opt, m, link=link)
    token = TokenIssuer(secret).issue(run_id=1, node_id=1, server_round=1)
    with EdgeClient(address, root_cert) as client:
        result = trainer.train(loader, lambda kk, tail, o: client.open_session(token, model.spec, kk, tail, o))
    totals = result.timeline.totals()
    return {
        "seconds": result.seconds,
        "per_batch_s": totals["span-s"] / len(loader),
        "uplink_bytes": float(result.traffic["uplink-bytes"]),
        "downlink_bytes": float(result.traffic["downlink-bytes"]),
        "server_s": float(totals.get("server-s", 0.0)),
        "device_s": float(totals.get("device-s", 0.0)),
        "fell_back": float(result.fell_back),
        "batches": float(len(loader)),
        "model_l1": float(sum(t.double().abs().sum() for t in model.state_dict().values() if t.is_floating_point())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: print the probe's JSON line; exit 1 if it fell back."""
    p = argparse.ArgumentParser(prog="python -m edgeflower.testbed.probe", description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--root-cert", default="")
    p.add_argument("--mode", default="split", help="split, pipeline or both comma-separated (one pass each)")
    p.add_argument("--repeats", type=int, default=1, help="passes per mode (one JSON line each)")
    p.add_argument("--mbps", type=float, default=0.0, help="emulated bandwidth both ways (0 = none)")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split-point", type=int, default=3)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument(
        "--compare-address",
        default="",
        help="also train against this edge server with the link emulated at --mbps, alternating pass by pass with "
        "an unemulated pass against --address (both see the same load on the machine)",
    )
    args = p.parse_args(argv)
    root = Path(args.root_cert).read_bytes() if args.root_cert else None
    modes = [m.strip() for m in args.mode.split(",")]
    if not modes or any(m not in ("split", "pipeline") for m in modes) or not 1 <= args.repeats <= 100:
        p.error("--mode takes split and/or pipeline; --repeats 1-100")
    fell_back = False
    for _ in range(args.repeats):
        for mode in modes:
            targets = [("emulated", args.compare_address, args.mbps), ("kernel", args.address, 0.0)]
            for side, address, mbps in targets if args.compare_address else [("", args.address, args.mbps)]:
                out = probe(
                    address, load_secret(args.secret_file), root, mode, mbps, args.latency_ms, args.batches,
                    args.batch_size, args.split_point, args.micro_batches, args.width,
                )  # fmt: skip
                print(json.dumps({"mode": mode, "side": side, **out}), flush=True)
                fell_back |= bool(out["fell_back"])
    return 1 if fell_back else 0


if __name__ == "__main__":
    sys.exit(main())
