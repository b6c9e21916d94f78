"""Benchmark ``testbed``: in-code link emulation against a real network stack, and faults on real links.

Needs root (network namespaces, veth, ``tc tbf``/``htb``); without it the benchmark says so and exits 2.

* ``emulation_vs_kernel_round_time_ratio`` (and ``..._<mode>_<mbps>``): the same split (sequential) and pipelined
  (PiPar, 4 micro-batches) pass of VGG5 (width 0.25, GroupNorm, cut after block 3, batch 64, real Fashion-MNIST)
  run twice at once by one process in a device namespace, the two passes taking turns batch by batch: one under
  in-code emulation (``EmulatedLink``) against an ``edgeflower edge-server`` on that namespace's loopback, one with
  no emulation over a shaped veth to an edge-server namespace (TLS both times), at 10 and 50 Mbit/s. Taking turns
  batch by batch puts a change in the machine's load (other jobs on a shared machine) on both passes alike; each
  pass's round time leaves out its waits for its turn. Ratio = emulated round time / kernel round time of each pair
  of passes, median over the repeats (the first pair of each mode is a warm-up); the headline figure is the one
  farthest from 1. ``link_only_ratio_split_<mbps>`` takes the measured device and server compute out of
  sequential rounds.

  What made the two differ, measured with per-phase timings (see the issue note): (1) the emulator charged its
  modelled wire time *and then* the real transfer over loopback (serialisation, TLS, gRPC: 13-90 ms per split step
  depending on the load), where a real link overlaps them: it now charges ``max(real, modelled)``
  (``EmulatedLink.deliver``); (2) the tail's weights sent up when the session opens and fetched at its close were
  not charged (0.18 s a pass at 10 Mbit/s); (3) on the kernel link, a pipelined round's ACKs and HTTP/2 window
  updates waited behind up to a second of the other direction's queued data in the shaper's FIFO (a pipelined
  pass took 1.2-1.3x the emulated time): the testbed's shaper now lets ACK-sized packets pass the bulk queue
  (:mod:`edgeflower.testbed.topology`); (4) the passes were timed one after the other on a shared machine whose
  load changed between them (repeats of one pair gave 1.07 and 1.61): they now take turns batch by batch, and
  every process computes on one thread (two-thread pools on 2 shared cores stall at their barriers). What
  remained was the wire's framing (Ethernet/IP/TCP headers of full frames: 1514/1448 = +4.6 %; TLS records,
  HTTP/2 and gRPC frames add a little), which made the kernel link 3-5 % slower (ratios 0.95 split, 0.89-0.93
  pipelined): the emulated passes here charge it (``EmulatedLink(framing=TCP_FRAMING)``; the emulator's default
  charges the tensors' bytes only).
* ``faults_injected`` / ``faults_survived`` / ``requests_lost``: faults on the testbed's links while training runs:
  a device's link unplugged mid-pass and plugged back, a bandwidth drop mid-pass (``tc qdisc change``), and (full
  mode) the same two in a Flower run over the Deployment Engine plus an edge host's link unplugged mid-round. A fault
  is survived when the pass (run) completes with every batch (every node's reply) and the trained model equals the
  unfaulted one (max |diff| of the L1 norm / of the weights below 1e-4 relative). ``requests_lost`` counts training
  batches and node replies that never arrived.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import parse_args, png_path, print_table, write_result
from edgeflower.runlog import run_folder
from edgeflower.testbed import Fault, PrivilegeError, Testbed, require_privileges
from edgeflower.testbed.faults import host_bytes
from edgeflower.transport.emulation import TCP_FRAMING, LinkProfile

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTHS = (10.0, 50.0)
MODES = ("split", "pipeline")
MODEL_TOL = 1e-4


def _probe_cmd(
    address: str, secret: Path, cert: Path, mode: str, mbps: float, batches: int, repeats: int = 1
) -> list[str]:
    return [sys.executable, "-m", "edgeflower.testbed.probe", "--address", address, "--secret-file", str(secret),
            "--root-cert", str(cert), "--mode", mode, "--mbps", str(mbps), "--batches", str(batches),
            "--width", "0.25", "--split-point", "3", "--micro-batches", "4", "--repeats", str(repeats)]  # fmt: skip


def _run_probe(cmd: list[str], namespace: str | None = None, timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Run the probe (in ``namespace``); its passes' results."""
    full = ["ip", "netns", "exec", namespace, *cmd] if namespace else cmd
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"probe failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return lines


def fidelity(
    tb: Testbed,
    batches: int,
    repeats: int,
    bandwidths: tuple[float, ...] = BANDWIDTHS,
    passes_out: list[dict[str, Any]] | None = None,
) -> list[dict]:
    """Emulated vs kernel-shaped round time for each mode and bandwidth.

    One probe process in the device's namespace runs pairs of passes taking turns batch by batch: one with no
    emulation over the shaped veth to the edge host, one with in-code emulation against an edge server on the
    namespace's loopback (same process, same model and data, same load on the machine); its first pair of each mode
    is a warm-up. ``passes_out`` (if given) receives every measured pass's result.
    """
    dev = tb.topology.host("dev-0").namespace
    loop = tb.start_loopback_edge("dev-0")
    rows = []
    for mbps in bandwidths:
        tb.shape(0, LinkProfile(mbps, mbps))
        args = (tb.edge_addresses[0], tb.files["secret"], tb.files["cert"], ",".join(MODES), mbps, batches)
        cmd = [*_probe_cmd(*args, repeats + 1), "--compare-address", loop, "--framing", str(TCP_FRAMING)]
        passes = _run_probe(cmd, dev)[2 * len(MODES) :]
        if passes_out is not None:
            passes_out.extend(passes)
        for mode in MODES:
            e_runs = [r for r in passes if r["mode"] == mode and r["side"] == "emulated"]
            k_runs = [r for r in passes if r["mode"] == mode and r["side"] == "kernel"]
            e = statistics.median(r["seconds"] for r in e_runs)
            k = statistics.median(r["seconds"] for r in k_runs)
            wire_s = 8 * (e_runs[0]["uplink_bytes"] + e_runs[0]["downlink_bytes"]) / (mbps * 1e6)
            paired = [x["seconds"] / y["seconds"] for x, y in zip(e_runs, k_runs, strict=True)]
            rows.append(
                {"mode": mode, "mbps": mbps, "emulated_s": e, "kernel_s": k, "ratio": statistics.median(paired),
                 "payload_wire_s": wire_s, "emu_device_s": statistics.median(r["device_s"] for r in e_runs),
                 "kern_device_s": statistics.median(r["device_s"] for r in k_runs),
                 "emu_server_s": statistics.median(r["server_s"] for r in e_runs),
                 "kern_server_s": statistics.median(r["server_s"] for r in k_runs),
                 "ratios": paired},
            )  # fmt: skip
            rows[-1]["link_only_ratio"] = link_only_ratio(rows[-1])
            print(json.dumps(rows[-1]), flush=True)
    tb.shape(0, LinkProfile(bandwidths[0], bandwidths[0]))
    return rows


def link_only_ratio(row: dict[str, Any]) -> float | None:
    """Emulated over kernel time spent on the link in a sequential (``split``) round: round time minus the device's
    and the edge server's measured compute (which, on a machine shared with other jobs, varies from pass to pass
    far more than the link does). ``None`` for pipelined rounds, whose compute overlaps the link."""
    if row["mode"] != "split":
        return None
    emu = row["emulated_s"] - row["emu_device_s"] - row["emu_server_s"]
    kern = row["kernel_s"] - row["kern_device_s"] - row["kern_server_s"]
    return emu / kern


def _probe_with_fault(
    tb: Testbed,
    fault: str,
    batches: int,
    reference: dict[str, float],
    base_mbps: float = BANDWIDTHS[0],
    down_s: float = 3.0,
    drop_mbps: float = 2.0,
) -> dict[str, Any]:
    """One probe pass on the testbed with ``fault`` injected once a third of its uplink bytes went out: the link
    unplugged for ``down_s`` or its bandwidth dropped from ``base_mbps`` to ``drop_mbps``."""
    host = tb.topology.host("dev-0")
    cmd = _probe_cmd(tb.edge_addresses[0], tb.files["secret"], tb.files["cert"], "split", 0.0, batches)
    base = host_bytes(host.namespace)[1]
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.update(result=_run_probe(cmd, host.namespace)[-1]), daemon=True)
    worker.start()
    injected = False
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        if host_bytes(host.namespace)[1] - base >= reference["uplink_bytes"] / 3:
            if fault == "device-link-down":
                tb.set_link("dev-0", False)
                time.sleep(down_s)
                tb.set_link("dev-0", True)
            else:
                tb.shape(0, LinkProfile(drop_mbps, drop_mbps))
            injected = True
            break
        time.sleep(0.05)
    worker.join(600)
    tb.shape(0, LinkProfile(base_mbps, base_mbps))
    res = box.get("result", {})
    diff = abs(res.get("model_l1", float("nan")) - reference["model_l1"]) / reference["model_l1"]
    survived = bool(res) and res["batches"] == reference["batches"] and diff < MODEL_TOL
    return {"fault": f"probe: {fault}", "injected": injected, "survived": injected and survived,
            "fell_back": res.get("fell_back"), "model_rel_diff": diff, "seconds": res.get("seconds"),
            "lost": 0 if res else int(reference["batches"])}  # fmt: skip


def _final_model(outcome: Any) -> dict[str, torch.Tensor]:
    folder = run_folder(outcome.extra["run_dir"], outcome.run_id)
    return torch.load(folder / "model.pt", weights_only=True)


def _replies(outcome: Any) -> tuple[int, int, int]:
    """(node replies, fallbacks, examples) of a finished run."""
    folder = run_folder(outcome.extra["run_dir"], outcome.run_id)
    nodes = json.loads((folder / "nodes.json").read_text())
    replies = [m for per_node in nodes.values() for m in per_node.values()]
    return len(replies), sum(int(m.get("fell-back", 0)) for m in replies), sum(int(m["num-examples"]) for m in replies)


def flower_faults(workdir: Path) -> list[dict[str, Any]]:
    """Faults in Flower runs on the testbed (Deployment Engine), each compared with an unfaulted run."""
    config = {"mode": "split", "num-rounds": 2, "model-width": 0.25, "max-batches": 6, "eval-samples": 200,
              "norm": "group", "split-point": 3}  # fmt: skip
    rows = []
    with Testbed(workdir, 1, 2, {"link-profiles": "10/10/0"}) as tb:
        base = tb.run(ROOT, config, timeout=900)
        if not base.ok:
            raise RuntimeError(f"unfaulted testbed run failed: {base.details}\n{base.logs[-3000:]}")
        ref = _final_model(base)
        ref_replies, _, ref_examples = _replies(base)
        up = 8 * 64 * 16 * 14 * 14 * 4 // 3  # a third of a round's activations (width 0.25, k = 3, batch 100)
        scenarios = [
            ("device link down 3 s + bandwidth drop to 2 Mbit/s (Flower run)",
             [Fault("link-down", "dev-0", 1, after_bytes=up, duration_s=3.0),
              Fault("bandwidth", "dev-1", 1, after_bytes=up, mbps=2.0)]),
            ("edge host link down 150 s (Flower run)", [Fault("link-down", "edge-0", 1, after_bytes=up,
                                                               duration_s=150.0)]),
        ]  # fmt: skip
        for name, faults in scenarios:
            out = tb.run(ROOT, config, timeout=1200, faults=faults)
            injected = sum(1 for e in out.extra["events"] if e["event"] == "fault-injected")
            replies, fallbacks, examples = _replies(out) if out.ok else (0, 0, 0)
            diff = float("nan")
            if out.ok:
                model = _final_model(out)
                diff = max(float((model[k].double() - ref[k].double()).abs().max()) for k in ref)
            survived = out.ok and replies == ref_replies and examples == ref_examples and diff < MODEL_TOL
            rows.append({"fault": name, "injected": injected, "survived": injected if survived else 0,
                         "fell_back": fallbacks, "model_rel_diff": diff, "seconds": out.elapsed,
                         "lost": ref_replies - replies, "events": out.extra["events"]})  # fmt: skip
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['mode']}\n{r['mbps']:g} Mbit/s" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["emulated_s"] for r in rows], 0.4, label="in-code emulation (loopback)")
    ax.bar([x + 0.2 for x in xs], [r["kernel_s"] for r in rows], 0.4, label="kernel tbf (namespaces)")
    for x, r in zip(xs, rows, strict=True):
        ax.text(x, max(r["emulated_s"], r["kernel_s"]) * 1.02, f"{r['ratio']:.2f}", ha="center")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("round time (s)")
    ax.set_title("same split/pipeline round: emulated vs kernel-shaped link")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    args = parse_args("testbed")
    try:
        require_privileges()
    except PrivilegeError as exc:
        print(f"benchmarks.testbed: {exc}", file=sys.stderr)
        return 2
    # one compute thread per process (the probe, each edge server): a pipelined pass computes on the device and on
    # the edge server at once, and on a 2-core machine shared with other jobs two-thread pools stall at their
    # barriers (measured: the same edge server's step time varied 10x between passes), which swamps the link
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    batches, repeats = (2, 1) if args.quick else (6, 3)
    # --quick: one fast bandwidth point, 2-batch passes and shorter faults (same sections, seconds not minutes); the
    # faults' reference pass is the fidelity probe's unemulated split pass (the same pass: same shape, data, seed and
    # no emulation), which saves a probe process (seconds of imports and start-up)
    bandwidths = (50.0,) if args.quick else BANDWIDTHS
    fault_batches = 2 if args.quick else 6
    down_s, drop_mbps = (1.0, 10.0) if args.quick else (3.0, 2.0)
    with tempfile.TemporaryDirectory(prefix="ef-testbed-bench-") as tmp:
        work = Path(tmp)
        link = {"link-profiles": f"{bandwidths[0]:g}/{bandwidths[0]:g}/0"}
        with Testbed(work / "probe-bed", 1, 1, link, flower=False) as tb:
            passes: list[dict[str, Any]] = []
            rows = fidelity(tb, batches, repeats, bandwidths, passes)
            if args.quick:
                ref = [p for p in passes if p["mode"] == "split" and p["side"] == "kernel"][-1]
            else:
                ref = _run_probe(
                    _probe_cmd(tb.edge_addresses[0], tb.files["secret"], tb.files["cert"], "split", 0.0, fault_batches),
                    tb.topology.host("dev-0").namespace,
                )[-1]
            faults = [
                _probe_with_fault(tb, f, fault_batches, ref, bandwidths[0], down_s, drop_mbps)
                for f in ("device-link-down", "bandwidth-drop")
            ]
        if not args.quick:
            try:
                faults += flower_faults(work / "flower-bed")
            except (RuntimeError, OSError) as exc:  # reported, not hidden: these faults count as not injected
                print(f"benchmarks.testbed: the Flower fault runs failed: {exc}", file=sys.stderr, flush=True)
                faults.append({"fault": "Flower runs", "injected": 0, "survived": 0, "lost": 0, "error": str(exc)})
    print_table(
        [{k: v for k, v in r.items() if k != "ratios"} for r in rows], title="emulated vs kernel-shaped round time"
    )
    print_table([{k: v for k, v in r.items() if k != "events"} for r in faults], title="faults on the testbed")
    ratios = {f"emulation_vs_kernel_round_time_ratio_{r['mode']}_{r['mbps']:g}": r["ratio"] for r in rows}
    worst = max(ratios.values(), key=lambda v: abs(v - 1.0))
    ratios.update({f"link_only_ratio_split_{r['mbps']:g}": r["link_only_ratio"] for r in rows if r["mode"] == "split"})
    figures = {
        "emulation_vs_kernel_round_time_ratio": worst,
        **ratios,
        "faults_injected": sum(int(r["injected"]) for r in faults),
        "faults_survived": sum(int(r["survived"]) for r in faults),
        "requests_lost": sum(int(r["lost"]) for r in faults),
    }
    _plot(rows, png_path("testbed", args))
    write_result("testbed", args, figures, {"fidelity": rows, "faults": faults})
    return 0


if __name__ == "__main__":
    sys.exit(main())
