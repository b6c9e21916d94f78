"""``python -m edgeflower.flwrctl``: run the app in the Simulation or Deployment Engine; exit 0 only if it completed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgeflower.flwrctl.deployment import Deployment
from edgeflower.flwrctl.outcome import RunOutcome, run_failures
from edgeflower.flwrctl.simulation import run_simulation

__all__ = ["build_parser", "main"]


def _parse_kv(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    from flwr.common.config import parse_config_args  # pylint: disable=C0415

    return dict(parse_config_args([text]))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m edgeflower.flwrctl`` (``run-sim``, ``run-deploy``)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m edgeflower.flwrctl",
        description="Run the Flower app and wait for its final status (exit 0 only if it completed).",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    helps = {
        "run-sim": "run in Flower's Simulation Engine (a local SuperLink, stopped afterwards)",
        "run-deploy": "run on a loopback Deployment Engine (SuperLink + SuperNodes, stopped afterwards)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=fmt)
        p.add_argument("app_dir", nargs="?", default=".", help="Flower app directory")
        p.add_argument("--home", default=".flwr", help="FLWR_HOME (keep it `.flwr`: excluded from FABs)")
        p.add_argument("--num-supernodes", type=int, default=2, help="SuperNodes (one data partition each)")
        p.add_argument("--run-config", default="", help='overrides, e.g. "num-rounds=3 lr=0.1"')
        p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is given up")
        p.add_argument("--logs", default="", help="write the run logs to this file")
        p.add_argument("--stream", action="store_true", help="follow the run's log live")
        if name == "run-sim":
            p.add_argument("--num-cpus", type=int, default=1, help="CPUs per simulated ClientApp")
            p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per simulated ClientApp")
            p.add_argument(
                "--ray-cpus", type=int, default=None, help="CPUs Ray may use (fewer: fewer ClientApps side by side)"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m edgeflower.flwrctl``).

    Parameters
    ----------
    argv : list[str] | None
        Arguments (defaults to ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if the run finished with ``finished:completed``, 1 otherwise.
    """
    args = build_parser().parse_args(argv)
    run_config = _parse_kv(args.run_config)
    try:
        outcome = _run_command(args, run_config)
    except KeyboardInterrupt:  # Ctrl-C: what we started was stopped on the way out (finally / __exit__)
        print("\nflwrctl: interrupted; stopped the SuperLink, SuperNodes and runs it started", file=sys.stderr)
        return 130
    return _finish(args, outcome)


def _run_command(args: argparse.Namespace, run_config: dict[str, Any]) -> RunOutcome:
    if args.cmd == "run-sim":
        outcome = run_simulation(
            Path(args.app_dir),
            Path(args.home),
            args.num_supernodes,
            run_config,
            args.timeout,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            ray_num_cpus=args.ray_cpus,
            stream=args.stream,
        )
    else:
        with Deployment(Path(args.home), args.num_supernodes) as dep:
            outcome = dep.run(Path(args.app_dir), run_config, args.timeout, stream=args.stream)
    return outcome


def _finish(args: argparse.Namespace, outcome: RunOutcome) -> int:
    if args.logs:
        Path(args.logs).write_text(outcome.logs, encoding="utf-8")
    elif not args.stream:
        sys.stdout.write(outcome.logs)
    print(f"run_id={outcome.run_id} status={outcome.status} elapsed={outcome.elapsed:.1f}s details={outcome.details}")
    if not outcome.ok and outcome.cli_output:
        print(outcome.cli_output, file=sys.stderr)
    if not outcome.ok:
        for line in run_failures(outcome):
            print(line, file=sys.stderr)
    return 0 if outcome.ok else 1
