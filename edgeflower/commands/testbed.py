"""``edgeflower testbed up|run|down``: a real-network testbed (network namespaces, shaped links) for the app.

``up`` builds the namespaces and links and starts the SuperLink, the edge servers (TLS) and the SuperNodes, then
returns and leaves them running (state in ``--dir``); ``run`` runs the app on it with ``flwr run``; ``down`` stops
every process and deletes the namespaces. Needs root; without it the command says so and stops.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

DEFAULT_DIR = "/tmp/edgeflower-testbed"


def register(subparsers: Any) -> None:
    """Add the ``testbed`` subcommand and its ``up``, ``run`` and ``down`` actions."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "testbed",
        help="bring a real-network testbed (namespaces, shaped links) up, run the app on it, tear it down",
        description=__doc__,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="create the testbed and leave it running")
    run = actions.add_parser("run", help="run the app on a running testbed")
    down = actions.add_parser("down", help="stop every process and delete the namespaces")
    for sub in (up, run, down):
        sub.add_argument("--dir", default=DEFAULT_DIR, help="the testbed's state directory (default: %(default)s)")
    up.add_argument("--edges", type=int, default=1, help="edge-server hosts (default: %(default)s)")
    up.add_argument("--devices", type=int, default=2, help="device hosts, one SuperNode each (default: %(default)s)")
    up.add_argument("--link-profiles", default="", help='per-device links as in run config, e.g. "10/10/5,50/50/5"')
    up.add_argument("--link-schedules", default="", help='per-device schedules by round, e.g. "1:50/50/0|3:5/5/0"')
    up.add_argument("--link-trace", default="", help="a JSON/CSV link trace applied to every device")
    run.add_argument("app_dir", nargs="?", default=".", help="the Flower app (default: the current directory)")
    run.add_argument("--run-config", default="", help="run-config overrides, e.g. \"mode='split' num-rounds=2\"")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds before the run is stopped")
    p.set_defaults(func=main)


def _parse_run_config(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text]))


def main(args: argparse.Namespace) -> int:
    """Carry out the action; return the exit code."""
    from edgeflower.testbed import PrivilegeError, Testbed
    from edgeflower.testbed.testbed import install_signal_handlers

    install_signal_handlers()
    workdir = Path(args.dir)
    try:
        if args.action == "up":
            link_config = {
                "link-profiles": args.link_profiles,
                "link-schedules": args.link_schedules,
                "link-trace": args.link_trace,
            }
            tb = Testbed(workdir, args.edges, args.devices, link_config)
            tb.start()
            tb.detach()
            print(f"testbed up ({tb.topology.prefix}): {tb.describe()}")
            print(f"run the app on it: edgeflower testbed run . --dir {workdir} --run-config \"mode='split'\"")
            print(f"tear it down:      edgeflower testbed down --dir {workdir}")
            return 0
        tb = Testbed.load(workdir)
        if args.action == "down":
            left = tb.stop()
            print("testbed down" if not left else f"testbed down, but could not remove: {left}")
            return 1 if left else 0
        outcome = tb.run(Path(args.app_dir), _parse_run_config(args.run_config), args.timeout)
        sys.stdout.write(outcome.logs)
        print(json.dumps({"events": outcome.extra.get("events", [])}))
        print(f"run_id={outcome.run_id} status={outcome.status} elapsed={outcome.elapsed:.1f}s {outcome.details}")
        return 0 if outcome.ok else 1
    except PrivilegeError as exc:
        print(f"edgeflower testbed: {exc}", file=sys.stderr)
        return 2
