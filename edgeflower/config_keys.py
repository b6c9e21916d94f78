"""What each run-config key accepts: :class:`ConfigError`, the choice lists, the numeric ranges and the parser of one
value (typed like its default, ``"auto"`` where allowed). :class:`~edgeflower.config.AppConfig` holds the keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edgeflower.transport.auth import MAX_LIFETIME_S

__all__ = ["AUTO", "FALLBACKS", "MODES", "PARTITIONERS", "RANGES", "ConfigError", "key_of", "parse_value"]


class ConfigError(ValueError):
    """A run-config value is invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"run-config key '{key}': {message}")
        self.key = key


MODES = ("fl", "split", "pipeline")
AUTO = {"split_point": -1, "microbatches": 0, "dp_noise_multiplier": 0.0}
"""Fields that also accept the string ``"auto"`` (stored as the number given here)."""
PARTITIONERS = ("iid", "dirichlet")
FALLBACKS = ("transient", "never")
"""``fallback``: see :data:`edgeflower.device.split.FALLBACK_MODES`."""
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_rounds": (lambda v: v >= 1, "must be >= 1"),
    "local_epochs": (lambda v: v >= 1, "must be >= 1"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "lr": (lambda v: v > 0, "must be > 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "lr_decay_round": (lambda v: v >= 0, "must be >= 0"),
    "fraction_train": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "min_nodes": (lambda v: v >= 1, "must be >= 1"),
    "max_batches": (lambda v: v >= 0, "must be >= 0"),
    "eval_samples": (lambda v: v >= 0, "must be >= 0"),
    "dirichlet_alpha": (lambda v: v > 0, "must be > 0"),
    "model_width": (lambda v: v > 0, "must be > 0"),
    "edge_servers": (lambda v: v >= 1, "must be >= 1"),
    "fallback_replay_mb": (lambda v: v >= 0, "must be >= 0"),
    "microbatches": (lambda v: v >= 0, "must be >= 1 (or 'auto')"),
    "max_message_mb": (lambda v: v >= 0, "must be >= 0 (0 = sized from the model)"),
    "max_failed_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "round_timeout": (
        lambda v: 0 < v <= MAX_LIFETIME_S,
        f"must be in (0, {MAX_LIFETIME_S:g}] seconds (a round's edge tokens live this long, and edge servers "
        f"refuse tokens that live longer than {MAX_LIFETIME_S:g} s)",
    ),
}
"""Numeric fields with their valid range: ``field -> (accepts(value), what the error says)``."""


def key_of(field_name: str) -> str:
    """Run-config key of an :class:`~edgeflower.config.AppConfig` field (``foo_bar`` is ``foo-bar``)."""
    return field_name.replace("_", "-")


def parse_value(name: str, default: Any, raw: Any) -> Any:
    """Field ``name``'s value from run-config value ``raw``, typed like ``default`` (``"auto"`` where allowed)."""
    if name in AUTO and isinstance(raw, str) and raw.strip().lower() == "auto":
        raw = AUTO[name]
    typ = type(default)
    try:
        if typ is bool:
            value: Any = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        elif typ in (int, float):
            if isinstance(raw, bool) or (typ is int and isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = typ(raw)
        else:
            value = str(raw)
    except (TypeError, ValueError):
        raise ConfigError(key_of(name), f"expected {typ.__name__}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key_of(name), f"must be a finite number, got {raw!r}")
    return value
