"""A project-local Flower home: its environment, its SuperLink connections, free ports and run-config literals."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import tomli_w

__all__ = [
    "DEFAULT_DEPLOYMENT_CONNECTION",
    "DEFAULT_SIM_CONNECTION",
    "exe",
    "flower_env",
    "format_config_overrides",
    "free_port",
    "write_connections",
]

DEFAULT_SIM_CONNECTION = "local-sim"
DEFAULT_DEPLOYMENT_CONNECTION = "local-deployment"
_BIN_DIR = Path(sys.executable).parent


def exe(name: str) -> str:
    """Return the path of a console script installed next to ``sys.executable``."""
    candidate = _BIN_DIR / name
    return str(candidate) if candidate.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    """Return a currently free TCP port on ``host``.

    Parameters
    ----------
    host : str
        Interface to probe.

    Returns
    -------
    int
        A port number that was free at the time of the call.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_env(home: Path, *, local_superlink_port: int | None = None) -> dict[str, str]:
    """Build the environment for every Flower process started by this module.

    Parameters
    ----------
    home : Path
        Project-local Flower home directory (``FLWR_HOME``). It is created if missing.
    local_superlink_port : int | None
        If given, the port of the managed local (simulation) SuperLink
        (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``). In Flower 1.42 all APIs (Control,
        Fleet, Runtime/ServerAppIo) share this single HTTP port;
        ``FLWR_LOCAL_CONTROL_API_PORT`` only feeds the deprecated
        ``--control-api-address`` flag and is set to ``port + 2`` for safety.

    Returns
    -------
    dict[str, str]
        A copy of ``os.environ`` with the Flower variables set and the virtualenv's
        ``bin`` directory prepended to ``PATH`` (``flwr`` spawns ``flower-superlink``,
        ``flower-superexec`` and ``flwr-simulation`` by name).
    """
    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
            # Keep Ray quiet and local.
            "RAY_DEDUP_LOGS": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        }
    )
    env["PATH"] = os.pathsep.join([str(_BIN_DIR), env.get("PATH", "")])
    if local_superlink_port is not None:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(local_superlink_port)
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(local_superlink_port + 2)
    return env


def write_connections(
    home: Path,
    *,
    sim_name: str = DEFAULT_SIM_CONNECTION,
    num_supernodes: int = 2,
    num_cpus: int = 1,
    num_gpus: float = 0.0,
    in_memory: bool = True,
    embed_options: bool = True,
    deployment_name: str | None = None,
    control_address: str | None = None,
    default: str | None = None,
) -> Path:
    """Write ``FLWR_HOME/config.toml`` with a simulation and an optional deployment.

    Parameters
    ----------
    home : Path
        The Flower home directory.
    sim_name : str
        Name of the simulation connection.
    num_supernodes : int
        Number of simulated SuperNodes.
    num_cpus : int
        CPUs reserved per simulated ClientApp (Ray ``client-resources``; an integer,
        the 1.42 proto field is ``uint32``). With 2 cores
        use ``1`` so two ClientApps run concurrently (Flower's default is ``2``, which
        serialises them).
    num_gpus : float
        GPUs reserved per simulated ClientApp.
    in_memory : bool
        Use ``:local-in-memory:`` (no ``state.db`` under ``FLWR_HOME``) instead of
        ``:local:``.
    embed_options : bool
        Store ``options.*`` (num-supernodes, backend resources) in the connection so a
        bare ``flwr run . <sim_name>`` uses them. Flower 1.42 still honours these but
        prints a deprecation warning; :func:`run_simulation` passes
        ``--federation-config`` instead, which takes precedence.
    deployment_name : str | None
        Name of a deployment connection to add (requires ``control_address``).
    control_address : str | None
        ``host:port`` of the SuperLink HTTP API (Control API) for the deployment.
    default : str | None
        Default connection name (``sim_name`` if omitted).

    Returns
    -------
    Path
        Path of the written ``config.toml``.
    """
    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    sim: dict[str, Any] = {"address": ":local-in-memory:" if in_memory else ":local:"}
    if embed_options:
        sim["options"] = {
            "num-supernodes": int(num_supernodes),
            "backend": {
                "name": "ray",
                "client-resources": {
                    "num-cpus": int(num_cpus),
                    "num-gpus": float(num_gpus),
                },
            },
        }
    superlink: dict[str, Any] = {"default": default or sim_name, sim_name: sim}
    if deployment_name is not None:
        if control_address is None:
            raise ValueError("control_address is required with deployment_name")
        superlink[deployment_name] = {"address": control_address, "insecure": True}
    path = home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": superlink}), encoding="utf-8")
    return path


def format_config_overrides(config: dict[str, Any] | None) -> list[str]:
    """Turn a dict into ``--run-config``/``--federation-config`` CLI arguments.

    Each pair becomes its own ``<flag> key=value`` argument value; values are encoded
    as TOML literals (strings quoted, booleans lowercase), which is what
    ``flwr.common.config.parse_config_args`` expects.

    Parameters
    ----------
    config : dict[str, Any] | None
        Key/value overrides. Keys must exist in ``[tool.flwr.app.config]`` for
        ``--run-config``.

    Returns
    -------
    list[str]
        One ``key=value`` string per entry.
    """
    items: list[str] = []
    for key, value in (config or {}).items():
        literal = tomli_w.dumps({"v": value}).strip()[len("v = ") :]
        items.append(f"{key}={literal}")
    return items
