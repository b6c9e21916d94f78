"""The ``edgeflower`` command.

Subcommands live in :mod:`edgeflower.commands`, one module per concept; each module defines
``register(subparsers) -> None`` that adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit code).

Starting is cheap: :data:`COMMANDS` names every subcommand with its one-line help, so ``edgeflower --help`` imports
no command module (they import torch, Flower, matplotlib); ``edgeflower COMMAND ...`` imports only that command's
module. Every parser shows its defaults (:class:`HelpFormatter`) and has a description (the one-line help unless the
command gives a longer one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "HelpFormatter", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "client-token": ("client_token", "issue a serving-client token (clients get the token, never the shared secret)"),
    "edge-server": ("edge_server", "run an edge server that trains devices' server-side layers"),
    "infer-node": ("infer_node", "run an inference node of a serving chain"),
    "move": ("move", "move a running node to another edge server mid-round"),
    "plot": ("plot", "draw a run's pictures (Gantt chart of a round, round times)"),
    "portfolio": ("portfolio", "inspect a pruned model portfolio"),
    "predict": ("predict", "send test images (or your own batch) to a serving controller and print the answers"),
    "prune": ("prune", "build a pruned model portfolio (IMP + lossless surgery)"),
    "serve": ("serve", "serve a partitioned model over inference nodes, with failover"),
    "serve-bundle": (
        "serve_bundle",
        "prepare a serving bundle (exit heads, profile, failover estimates) from a trained model",
    ),
    "testbed": (
        "testbed",
        "bring a real-network testbed (namespaces, shaped links) up, run the app on it, tear it down",
    ),
    "train-agent": ("train_agent", "train the FedAdapt PPO agent offline and save its policy"),
}
"""Subcommand -> (module of :mod:`edgeflower.commands`, one-line help); tests check it against the modules."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is nothing to show (``None``, ``False``, ``""``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == "" or default is argparse.SUPPRESS:
            return text
        if "%(default)" in text:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return text + " (default: %(default)s)"


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Every subparser gets :class:`HelpFormatter` and, without its own, its help as description."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"][0].upper() + kwargs["help"][1:] + "."
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose subcommands (at every level) use :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)


def _version() -> str:
    from edgeflower import __version__

    try:
        from importlib.metadata import version

        return version("edgeflower")
    except Exception:  # not installed (run from a checkout): the package's own version
        return __version__


def build_parser(only: str | None = "") -> argparse.ArgumentParser:
    """The ``edgeflower`` parser.

    Parameters
    ----------
    only : str or None
        ``""`` (default): register every subcommand (imports every command module). A command name: register that
        one fully and the others by name and help only. ``None``: every command by name and help only.
    """
    parser = Parser(
        prog="edgeflower",
        description="Edge-computing techniques for Flower: split training, pruning portfolios, partitioned serving.",
        epilog="`edgeflower COMMAND --help` describes each command. The Flower app itself runs with `flwr run .`.",
    )
    parser.add_argument("--version", action="version", version=f"edgeflower {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, text) in COMMANDS.items():
        if only == "" or only == name:
            module = importlib.import_module(f"edgeflower.commands.{module_name}")
            module.register(sub)
        else:
            sub.add_parser(name, help=text)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgeflower`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_of(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgeflower {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nedgeflower {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
