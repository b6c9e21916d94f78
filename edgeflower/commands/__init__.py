"""Subcommands of the ``edgeflower`` command (see :mod:`edgeflower.cli`)."""
