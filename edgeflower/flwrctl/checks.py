"""A run config checked before Flower is asked: unknown keys named, edgeflower's own validation applied."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["invalid_run_config", "unknown_run_config_keys"]


def unknown_run_config_keys(app_dir: Path, run_config: dict[str, Any] | None) -> str:
    """A message naming the ``run_config`` keys the app's ``[tool.flwr.app.config]`` lacks ('' when none).

    Flower refuses such keys with only ``Invalid run configuration``; this names them (and the nearest known key)
    before ``flwr run`` is called.
    """
    import difflib

    try:
        with open(Path(app_dir) / "pyproject.toml", "rb") as fh:
            known = set(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return ""  # not an app we can read: let Flower decide
    problems = []
    for key in sorted(set(run_config or {}) - known):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        problems.append(f"'{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
    if not problems:
        return ""
    where = Path(app_dir) / "pyproject.toml"
    return f"unknown run-config key {', '.join(problems)}: not in [tool.flwr.app.config] of {where}"


def invalid_run_config(app_dir: Path, run_config: dict[str, Any] | None) -> str:
    """edgeflower's validation of the whole run config of its own app, before Flower starts ('' when valid).

    The ServerApp validates the same config (:meth:`edgeflower.config.AppConfig.from_run_config`) and fails the run
    with the same message, but only after Flower has started a SuperLink, the Simulation Runtime and Ray (tens of
    seconds); checked here, a wrong value is named at once. Apps other than edgeflower's are left to Flower.
    """
    try:
        with open(Path(app_dir) / "pyproject.toml", "rb") as fh:
            app = tomllib.load(fh)["tool"]["flwr"]["app"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return ""
    if not str(app.get("components", {}).get("serverapp", "")).startswith("edgeflower.app."):
        return ""
    from edgeflower.config import AppConfig, ConfigError

    try:
        AppConfig.from_run_config({**app.get("config", {}), **(run_config or {})})
    except ConfigError as err:
        return f"invalid run config: {err}"
    return ""
