"""``edgeflower plot RUN_DIR``: draw a run's pictures (accuracy/loss/round time, Gantt charts, per-node times)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeflower.plotting import plot_gantt, plot_round_times, plot_run

__all__ = ["plot_run_dir", "register"]


def plot_run_dir(run_dir: str | Path, rounds: list[int] | None = None) -> list[Path]:
    """Draw ``run.png``, ``round-times.png`` and ``gantt-round-<n>.png`` for a run directory.

    Parameters
    ----------
    run_dir : str or Path
        A run folder written by :class:`edgeflower.runlog.RunLog`.
    rounds : list of int, optional
        Rounds to draw Gantt charts for (default: the first and the last round with a timeline).

    Returns
    -------
    list of Path
        The PNG files written.
    """
    path = Path(run_dir)
    metrics = path / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no metrics.json)")
    rows = json.loads(metrics.read_text())
    written = [plot_run(rows, path / "run.png")]
    nodes_file = path / "nodes.json"
    if nodes_file.is_file():
        nodes = json.loads(nodes_file.read_text())
        per_node = {
            int(r): {n: float(m["train-time-s"]) for n, m in v.items() if "train-time-s" in m} for r, v in nodes.items()
        }
        labels = {
            n: f"partition {int(m['partition-id'])}"
            for v in nodes.values()
            for n, m in v.items()
            if "partition-id" in m
        }
        if any(per_node.values()):
            written.append(plot_round_times(per_node, path / "round-times.png", labels))
    tl_dir = path / "timelines"
    available = sorted(int(p.stem.split("-")[1]) for p in tl_dir.glob("round-*.json")) if tl_dir.is_dir() else []
    wanted = rounds if rounds is not None else sorted({available[0], available[-1]}) if available else []
    for rnd in wanted:
        file = tl_dir / f"round-{rnd}.json"
        if not file.is_file():
            raise FileNotFoundError(f"no timeline for round {rnd} in {tl_dir}")
        data = json.loads(file.read_text())
        if "nodes" in data:  # on the round's clock (edgeflower.runlog.round_timelines)
            timelines, round_s = data["nodes"], data.get("round-s")
        else:  # older runs: each node on its own clock
            timelines, round_s = {f"node {n}": ivs for n, ivs in data.items()}, None
        title = f"round {rnd}: every node's phases on the round's clock"
        written.append(plot_gantt(timelines, path / f"gantt-round-{rnd}.png", title=title, round_s=round_s))
    return written


def _run(args: argparse.Namespace) -> int:
    for p in plot_run_dir(args.run_dir, args.round or None):
        print(p)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand."""
    p = sub.add_parser(
        "plot",
        help="draw a run's pictures (Gantt chart of a round, round times)",
        description="Draw run.png (accuracy, loss, round time), round-times.png (training time per node) and "
        "gantt-round-<n>.png (every node's device/uplink/server/downlink phases on the round's clock) into a run "
        "folder.",
    )
    p.add_argument("run_dir", help="a run folder (runs/<date>-run<id>)")
    p.add_argument("--round", type=int, action="append", help="round to draw a Gantt chart for (repeatable)")
    p.set_defaults(func=_run)
