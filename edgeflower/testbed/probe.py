"""One device's split or pipelined training pass against an edge server, timed: the fidelity probe.

``python -m edgeflower.testbed.probe --address HOST:PORT --secret-file S [--root-cert C] --mode split ...`` trains
real Fashion-MNIST batches through :class:`~edgeflower.device.pipeline.PipelineTrainer` (the ClientApp's trainer)
with the link emulated in code (``--mbps``/``--latency-ms``) or not at all (``--mbps 0``: on the testbed the kernel
shapes it) and prints one JSON line: round seconds, per-batch seconds, bytes, whether it fell back and the trained
model's L1 norm (to compare a faulted pass with an unfaulted one).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeflower.data import BatchLoader, load_dataset
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.models.zoo import build_model
from edgeflower.transport import EdgeClient, OptimizerSettings, TokenIssuer
from edgeflower.transport.auth import load_secret
from edgeflower.transport.emulation import EmulatedLink, LinkProfile

__all__ = ["PassShape", "Turns", "compare", "main", "probe"]


class Turns:
    """Two passes in one process taking turns batch by batch, so both see the same load on the machine.

    A pass takes its turn before it opens its session and before each batch after the first, and gives it back
    after each batch (after its last one, once the pass is over); each side's time spent waiting for its turn is
    kept in :attr:`waited` (seconds), to be taken out of its round time.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._turn = 0
        self._finished = [False, False]
        self.waited = [0.0, 0.0]

    def take(self, side: int) -> None:
        """Block until it is ``side``'s turn (or the other side has finished)."""
        t0 = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: self._turn == side or self._finished[1 - side])
        self.waited[side] += time.perf_counter() - t0

    def give(self, side: int, finished: bool = False) -> None:
        """Hand the turn to the other side (``finished``: ``side`` takes no more turns)."""
        with self._cond:
            self._finished[side] = self._finished[side] or finished
            self._turn = 1 - side
            self._cond.notify_all()

    def batches(self, side: int, loader: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Any]:
        """``loader``'s batches, each one taken on ``side``'s turn."""
        for i, batch in enumerate(loader):
            if i > 0:
                self.give(side)
                self.take(side)
            yield batch


@dataclass(frozen=True)
class PassShape:
    """What one pass trains: ``batches`` batches of ``batch_size`` Fashion-MNIST test images through VGG5 (GroupNorm,
    ``width``) split at ``split_point`` (pipelined with ``micro_batches`` in ``pipeline`` mode), ``latency_ms`` of
    emulated latency each way, data and initial weights from ``seed``."""

    latency_ms: float = 0.0
    batches: int = 10
    batch_size: int = 64
    split_point: int = 3
    micro_batches: int = 4
    width: float = 1.0
    seed: int = 0


def _setup(
    mode: str, mbps: float, shape: PassShape, framing: float = 1.0
) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]], PipelineTrainer]:
    torch.manual_seed(shape.seed)
    model = build_model("vgg5", norm="group", **({"width": shape.width} if shape.width != 1.0 else {}))
    data = load_dataset("fashion-mnist", train=False).subset(range(shape.batch_size * shape.batches))
    loader = list(BatchLoader(data, shape.batch_size, seed=shape.seed).batches(0))
    m = shape.micro_batches if mode == "pipeline" else 1
    link = EmulatedLink(LinkProfile(mbps, mbps, shape.latency_ms), framing=framing)
    opt = OptimizerSettings(lr=0.01, momentum=0.9)
    return model, loader, PipelineTrainer(model, shape.split_point, opt, m, link=link)


def _train(
    setup: tuple[Any, list[tuple[torch.Tensor, torch.Tensor]], PipelineTrainer],
    address: str,
    secret: bytes,
    root_cert: bytes | None,
    turns: Turns | None = None,
    side: int = 0,
) -> dict[str, float]:
    model, loader, trainer = setup
    token = TokenIssuer(secret).issue(run_id=1, node_id=1, server_round=1)
    with EdgeClient(address, root_cert) as client:

        def open_session(kk: int, tail: Any, o: OptimizerSettings) -> Any:
            if turns is not None:
                turns.take(side)
            return client.open_session(token, model.spec, kk, tail, o)

        try:
            batches = turns.batches(side, loader) if turns is not None else loader
            result = trainer.train(batches, open_session)
        finally:
            if turns is not None:
                turns.give(side, finished=True)
    totals = result.timeline.totals()
    waited = turns.waited[side] if turns is not None else 0.0
    return {
        "seconds": result.seconds - waited,
        "waited_s": waited,
        "per_batch_s": totals["span-s"] / len(loader),
        "uplink_bytes": float(result.traffic["uplink-bytes"]),
        "downlink_bytes": float(result.traffic["downlink-bytes"]),
        "server_s": float(totals.get("server-s", 0.0)),
        "device_s": float(totals.get("device-s", 0.0)),
        "fell_back": float(result.fell_back),
        "batches": float(len(loader)),
        "model_l1": float(sum(t.double().abs().sum() for t in model.state_dict().values() if t.is_floating_point())),
    }


def probe(
    address: str, secret: bytes, root_cert: bytes | None, mode: str, mbps: float, shape: PassShape = PassShape()
) -> dict[str, float]:
    """Train one pass of ``shape`` against the edge server at ``address`` with the link emulated at ``mbps`` (``0``:
    none); return the timings."""
    setup = _setup(mode, mbps, shape)
    return _train(setup, address, secret, root_cert)


def compare(
    emulated_address: str,
    kernel_address: str,
    secret: bytes,
    root_cert: bytes | None,
    mode: str,
    mbps: float,
    shape: PassShape = PassShape(),
    framing: float = 1.0,
) -> dict[str, dict[str, float]]:
    """The same pass twice at once, taking turns batch by batch (:class:`Turns`): with the link emulated in code at
    ``mbps`` (``framing``: see :class:`~edgeflower.transport.emulation.EmulatedLink`) against ``emulated_address``,
    and with no emulation against ``kernel_address`` (the kernel shapes that link). Both passes' batches run
    interleaved, so a change in the machine's load between them falls on both; each pass's ``seconds`` leaves out
    the time it waited for its turn. Returns ``{"emulated": ..., "kernel": ...}``.
    """
    setups = [_setup(mode, mbps, shape, framing=framing), _setup(mode, 0.0, shape)]
    turns = Turns()
    out: dict[int, dict[str, float]] = {}
    errors: list[BaseException] = []

    def run(side: int, address: str) -> None:
        try:
            out[side] = _train(setups[side], address, secret, root_cert, turns, side)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(side, address), name=f"probe-{side}", daemon=True)
        for side, address in enumerate((emulated_address, kernel_address))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"emulated": out[0], "kernel": out[1]}


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
    p.add_argument(
        "--framing", type=float, default=1.0, help="emulated bytes on the wire per payload byte (1.0: payload only)"
    )
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split-point", type=int, default=3)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument(
        "--compare-address",
        default="",
        help="also train against this edge server with the link emulated at --mbps, taking turns batch by batch "
        "with an unemulated pass against --address (both see the same load on the machine)",
    )
    args = p.parse_args(argv)
    root = Path(args.root_cert).read_bytes() if args.root_cert else None
    modes = [m.strip() for m in args.mode.split(",")]
    if not modes or any(m not in ("split", "pipeline") for m in modes) or not 1 <= args.repeats <= 100:
        p.error("--mode takes split and/or pipeline; --repeats 1-100")
    fell_back = False
    secret = load_secret(args.secret_file)
    shape = PassShape(args.latency_ms, args.batches, args.batch_size, args.split_point, args.micro_batches, args.width)
    for _ in range(args.repeats):
        for mode in modes:
            if args.compare_address:
                sides = compare(args.compare_address, args.address, secret, root, mode, args.mbps, shape, args.framing)
            else:
                sides = {"": probe(args.address, secret, root, mode, args.mbps, shape)}
            for side, out in sides.items():
                print(json.dumps({"mode": mode, "side": side, **out}), flush=True)
                fell_back |= bool(out["fell_back"])
    return 1 if fell_back else 0


if __name__ == "__main__":
    sys.exit(main())
