"""``edgeflower plot RUN_DIR``: draw a run's pictures (accuracy/loss/round time, Gantt charts, per-node times)."""

from __future__ import annotations

import argparse

from edgeflower.plotting import plot_run_dir

__all__ = ["register"]


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
