"""The ``edgeflower`` command.

Subcommands live in :mod:`edgeflower.commands`, one module per concept; each module defines
``register(subparsers) -> None`` that adds its parser and sets ``func`` (a callable taking the parsed
arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import edgeflower.commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand of :mod:`edgeflower.commands` registered."""
    parser = argparse.ArgumentParser(prog="edgeflower", description="Edge-computing techniques for Flower.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(edgeflower.commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"edgeflower.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgeflower`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgeflower {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
