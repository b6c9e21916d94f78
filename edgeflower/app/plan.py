"""The contract between the ServerApp and the ClientApp: one node's plan for one round.

The ServerApp builds a :class:`NodePlan` per node and sends :meth:`NodePlan.to_config` in the training message's
``config`` record; the ClientApp reads it back with :meth:`NodePlan.from_config`. Keys are hyphenated (Flower's
convention) and lists travel as lists (a ``ConfigRecord`` holds ``list[str]``). Every value is checked in one place,
the dataclasses' ``__post_init__``, and a bad value raises :class:`PlanError` naming its key.

============================  =======================================================================================
key                           meaning
============================  =======================================================================================
``lr``                        learning rate of the round (absent: the train config's, else the run config's)
``split-point``               blocks trained on the device (``num_blocks``: classic FL, nothing offloaded)
``microbatches``              micro-batches per batch in flight at once (``1``: sequential split training)
``predicted-iter-s``          the planner's predicted seconds per batch (PiPar), echoed next to the measured ones
``edge-address``              ``host:port`` of the edge server that trains the tail
``edge-token``                the single-use ``device`` token that opens the node's session there
``edge-index``                index of that edge server in ``edge-addresses``
``edge-addresses``            every edge server of the round (where a node may move)
``move-tokens``               a ``migration`` token per edge server, in the order of ``edge-addresses``
``move-edge``                 a scheduled move this round: the destination's index in ``edge-addresses``
``move-fraction``             ... after this share of the round's batches (``[0, 1)``)
``move-mode``                 ... as ``migrate`` (FedFly) or ``restart`` (the baseline)
============================  =======================================================================================

Other keys of the config record (Flower's ``server-round``, FedProx's ``proximal-mu`` ...) are not part of the plan
and are ignored here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeflower.device.mobility import MOVE_MODES

__all__ = ["ConfigValue", "Mobility", "NodePlan", "PlanError", "PlannedMove"]

ConfigValue = int | float | str | list[str]
"""A plan value as it travels in a ``ConfigRecord``."""


class PlanError(ValueError):
    """A plan value is missing, of the wrong type or out of range.

    Parameters
    ----------
    key : str
        The config key of the value.
    message : str
        What is wrong with it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"plan key {key!r}: {message}")
        self.key = key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(key: str, value: Any, low: int, high: int | None = None) -> None:
    if not _is_int(value):
        raise PlanError(key, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f"..{high}"
        raise PlanError(key, f"{value} is out of range {low}{upper or ' or more'}")


def _check_float(key: str, value: Any, low: float = 0.0, below: float | None = None) -> None:
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
        raise PlanError(key, f"must be a finite number, got {value!r}")
    if value < low or (below is not None and value >= below):
        upper = "" if below is None else f" and below {below:g}"
        raise PlanError(key, f"{value} must be >= {low:g}{upper}")


def _check_str(key: str, value: Any) -> None:  # the value is not quoted: it may be a token
    if not isinstance(value, str) or not value:
        got = "an empty one" if value == "" else type(value).__name__
        raise PlanError(key, f"must be a non-empty string, got {got}")


def _check_strs(key: str, values: Any) -> None:
    if not isinstance(values, tuple | list) or not values:
        got = "an empty list" if isinstance(values, tuple | list) else type(values).__name__
        raise PlanError(key, f"must be a non-empty list of strings, got {got}")
    for value in values:
        _check_str(key, value)


@dataclass(frozen=True)
class PlannedMove:
    """A move scheduled for this round (FedFly's migration, or the restart baseline).

    Attributes
    ----------
    edge : int
        ``move-edge``: the destination's index in :attr:`Mobility.edge_addresses`.
    fraction : float
        ``move-fraction``: the share of the round's batches trained before the move, in ``[0, 1)``.
    mode : str
        ``move-mode``: ``"migrate"`` or ``"restart"``.
    """

    edge: int
    fraction: float
    mode: str = "migrate"

    def __post_init__(self) -> None:
        _check_int("move-edge", self.edge, 0)
        _check_float("move-fraction", self.fraction, 0.0, 1.0)
        if self.mode not in MOVE_MODES:
            raise PlanError("move-mode", f"unknown mode {self.mode!r}: expected one of {', '.join(MOVE_MODES)}")


@dataclass(frozen=True)
class Mobility:
    """Where a node may move this round: every edge server, a migration token for each, and a scheduled move.

    Attributes
    ----------
    edge_index : int
        ``edge-index``: the edge server the node starts the round on.
    edge_addresses : tuple of str
        ``edge-addresses``: every edge server of the round.
    move_tokens : tuple of str
        ``move-tokens``: a migration token per edge server, in the same order.
    move : PlannedMove or None
        The move scheduled for this node and round, if any.
    """

    edge_index: int
    edge_addresses: tuple[str, ...]
    move_tokens: tuple[str, ...]
    move: PlannedMove | None = None

    def __post_init__(self) -> None:
        _check_strs("edge-addresses", self.edge_addresses)
        _check_strs("move-tokens", self.move_tokens)
        n = len(self.edge_addresses)
        if len(self.move_tokens) != n:
            raise PlanError("move-tokens", f"has {len(self.move_tokens)} tokens for {n} edge servers")
        _check_int("edge-index", self.edge_index, 0, n - 1)
        if self.move is not None and self.move.edge >= n:
            raise PlanError("move-edge", f"edge {self.move.edge} does not exist: there are {n} edge servers")

    def to_config(self) -> dict[str, ConfigValue]:
        """The hyphenated config entries (see the module docstring)."""
        entries: dict[str, ConfigValue] = {
            "edge-index": self.edge_index,
            "edge-addresses": list(self.edge_addresses),
            "move-tokens": list(self.move_tokens),
        }
        if self.move is not None:
            entries.update({"move-edge": self.move.edge, "move-fraction": self.move.fraction})
            entries["move-mode"] = self.move.mode
        return entries

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Mobility | None:
        """The mobility entries of a config record (``None`` when it lists no edge servers)."""
        if "edge-addresses" not in config:
            return None
        move = None
        if "move-edge" in config:
            move = PlannedMove(
                _required(config, "move-edge"), _required(config, "move-fraction"), config.get("move-mode", "migrate")
            )
        return cls(
            _required(config, "edge-index"),
            _strings(config, "edge-addresses"),
            _strings(config, "move-tokens"),
            move,
        )


def _required(config: Mapping[str, Any], key: str) -> Any:
    if key not in config:
        raise PlanError(key, "is missing")
    return config[key]


def _strings(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = _required(config, key)
    if not isinstance(values, list | tuple):
        raise PlanError(key, f"must be a list of strings, got {type(values).__name__}")
    return tuple(values)


@dataclass(frozen=True)
class NodePlan:
    """One node's plan for one round: what the ServerApp sends and the ClientApp follows.

    Attributes
    ----------
    split_point : int
        ``split-point``: blocks trained on the device (``num_blocks``: classic FL).
    lr : float or None
        ``lr``: the round's learning rate (``None``: the train config's, else the run config's).
    micro_batches : int
        ``microbatches``: micro-batches per batch in flight (``1``: sequential split training).
    predicted_iter_s : float or None
        ``predicted-iter-s``: the planner's predicted seconds per batch (``None``: no prediction).
    edge_address : str or None
        ``edge-address``: the edge server that trains the tail (``None``: nothing offloaded).
    edge_token : str or None
        ``edge-token``: the token that opens the node's session there (given with ``edge_address``).
    mobility : Mobility or None
        Every edge server with its migration token and a scheduled move (``None``: no mobility entries).

    Raises
    ------
    PlanError
        A value is of the wrong type or out of range; the error names its config key.
    """

    split_point: int
    lr: float | None = None
    micro_batches: int = 1
    predicted_iter_s: float | None = None
    edge_address: str | None = None
    edge_token: str | None = None
    mobility: Mobility | None = None

    def __post_init__(self) -> None:
        _check_int("split-point", self.split_point, 0)
        _check_int("microbatches", self.micro_batches, 1)
        if self.lr is not None:
            _check_float("lr", self.lr)
        if self.predicted_iter_s is not None:
            _check_float("predicted-iter-s", self.predicted_iter_s)
        if (self.edge_address is None) != (self.edge_token is None):
            missing = "edge-token" if self.edge_token is None else "edge-address"
            raise PlanError(missing, "edge-address and edge-token come together")
        if self.edge_address is not None:
            _check_str("edge-address", self.edge_address)
            _check_str("edge-token", self.edge_token)

    def offloads(self, num_blocks: int) -> bool:
        """Whether the node trains blocks on an edge server (``split_point < num_blocks``)."""
        return self.split_point < num_blocks

    def to_config(self) -> dict[str, ConfigValue]:
        """The plan as ``ConfigRecord`` entries: hyphenated keys, lists as ``list[str]``, absent values left out."""
        entries: dict[str, ConfigValue] = {"split-point": self.split_point, "microbatches": self.micro_batches}
        if self.lr is not None:
            entries["lr"] = float(self.lr)
        if self.predicted_iter_s is not None:
            entries["predicted-iter-s"] = float(self.predicted_iter_s)
        if self.edge_address is not None and self.edge_token is not None:
            entries.update({"edge-address": self.edge_address, "edge-token": self.edge_token})
        if self.mobility is not None:
            entries.update(self.mobility.to_config())
        return entries

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_blocks: int | None = None) -> NodePlan:
        """Read a plan from a training message's config record.

        Parameters
        ----------
        config : mapping
            The ``config`` record (keys that are not the plan's are ignored).
        num_blocks : int, optional
            The model's blocks: a missing ``split-point`` then means classic FL, ``split-point`` must not exceed
            it, and a plan that offloads must name its edge server.

        Raises
        ------
        PlanError
            A value is missing, of the wrong type or out of range; the error names its config key.
        """
        if "split-point" in config:
            split_point = config["split-point"]
        elif num_blocks is not None:
            split_point = num_blocks
        else:
            raise PlanError("split-point", "is missing")
        address, token = config.get("edge-address"), config.get("edge-token")
        plan = cls(
            split_point=split_point,
            lr=config.get("lr"),
            micro_batches=config.get("microbatches", 1),
            predicted_iter_s=config.get("predicted-iter-s"),
            edge_address=address,
            edge_token=token,
            mobility=Mobility.from_config(config),
        )
        if num_blocks is not None:
            _check_int("split-point", plan.split_point, 0, num_blocks)
            if plan.offloads(num_blocks) and plan.edge_address is None:
                raise PlanError(
                    "edge-address", f"split-point {plan.split_point} < {num_blocks} blocks needs an edge server"
                )
        return plan
