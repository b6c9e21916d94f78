"""``edgeflower move``: tell a running node to move to another edge server (FedFly migration trigger)."""

from __future__ import annotations

import argparse

from edgeflower.device.mobility import MOVE_MODES, write_trigger

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    write_trigger(args.trigger, args.to, args.mode)
    print(f"move to edge server {args.to} ({args.mode}) requested through {args.trigger}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``move`` subcommand."""
    p = sub.add_parser(
        "move",
        help="move a running node to another edge server mid-round",
        description=(
            "Write a move request to a node's trigger file (its node config's 'move-trigger'); the node moves to "
            "edge server TO of its current plan at the next batch boundary, with a migration token the ServerApp "
            "issued for that edge server."
        ),
    )
    p.add_argument("--trigger", required=True, help="the node's trigger file (node config 'move-trigger')")
    p.add_argument("--to", type=int, required=True, help="index of the destination edge server in the plan")
    p.add_argument("--mode", choices=MOVE_MODES, default="migrate", help="migrate the state, or restart the round")
    p.set_defaults(func=_run)
