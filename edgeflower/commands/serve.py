"""``edgeflower serve``: run the serving controller over a chain of inference nodes, from a JSON config.

Config (paths relative to the config file)::

    {
      "bundle": "bundle",                       # a ServingBundle directory (edgeflower serve-bundle)
      "nodes": ["10.0.0.5:50061", "10.0.0.6:50061", "10.0.0.7:50061"],   # one per partition part,
                                                # or a number: start that many local infer-node processes
      "secret_file": "serve.secret",            # shared with the nodes and the clients
      "journal": "serve.journal.jsonl",         # request journal (exactly-once across restarts)
      "host": "127.0.0.1", "port": 0,
      "objectives": {"min_accuracy": 0.8, "max_latency_ms": 50, "max_downtime_s": 1.0,
                     "priority": ["accuracy", "latency", "downtime"]},
      "links": ["100/100/2", "10/10/5", "0"],   # optional emulated link per node, up/down Mbit/s / latency ms
      "heartbeat_s": 0.2, "misses": 2,
      "tls_cert": null, "tls_key": null, "node_root_cert": null,
      "insecure": false                         # allow plaintext on a non-loopback host (logs a WARNING)
    }

Prints ``controller listening on HOST:PORT`` once it serves; stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeflower.commands._server_command import serve_until_signal
from edgeflower.serving.bundle import ServingBundle
from edgeflower.serving.controller import Controller, ControllerConfig
from edgeflower.serving.journal import Journal
from edgeflower.serving.launch import NodeProcess
from edgeflower.serving.selection import Objectives
from edgeflower.transport.auth import load_secret
from edgeflower.transport.emulation import parse_profiles
from edgeflower.transport.errors import EdgeError
from edgeflower.transport.tls import TLSConfig

__all__ = ["KEYS", "build_controller", "register", "run"]

KEYS = {
    "bundle",
    "nodes",
    "secret_file",
    "journal",
    "host",
    "port",
    "objectives",
    "links",
    "heartbeat_s",
    "misses",
    "tls_cert",
    "tls_key",
    "node_root_cert",
    "insecure",
}


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve a partitioned model over inference nodes, with failover",
        description="Deploy a serving bundle over inference nodes and answer predictions until SIGTERM/SIGINT.",
    )
    p.add_argument("--config", required=True, type=Path, help="JSON config (see docs/serving.md)")
    p.add_argument("--port", type=int, help="override the config's port")
    p.add_argument("--journal", type=Path, help="override the config's journal file")
    p.set_defaults(func=run)


def build_controller(config: dict[str, Any], base: Path) -> Controller:
    """A :class:`Controller` from a config dict (relative paths are under ``base``)."""
    unknown = set(config) - KEYS
    if unknown:
        raise ValueError(f"unknown serve config keys {sorted(unknown)}; known: {sorted(KEYS)}")
    for key in ("bundle", "nodes", "secret_file"):
        if key not in config:
            raise ValueError(f"serve config needs {key!r}")

    def path(key: str) -> Path | None:
        value = config.get(key)
        return None if value in (None, "") else base / str(value)

    if bool(config.get("tls_cert")) != bool(config.get("tls_key")):
        raise ValueError("tls_cert and tls_key go together")
    tls = TLSConfig.from_files(path("tls_cert"), path("tls_key")) if config.get("tls_cert") else None  # type: ignore[arg-type]
    root = path("node_root_cert")
    links = parse_profiles(",".join(config.get("links", [])), "link")
    return Controller(
        ServingBundle.load(path("bundle")),  # type: ignore[arg-type]
        [str(a) for a in config["nodes"]],
        load_secret(path("secret_file")),  # type: ignore[arg-type]
        Objectives.from_dict(config.get("objectives", {})),
        links,
        Journal(path("journal")),
        str(config.get("host", "127.0.0.1")),
        int(config.get("port", 0)),
        ControllerConfig(
            heartbeat_s=float(config.get("heartbeat_s", 0.2)),
            misses=int(config.get("misses", 2)),
            insecure=_flag(config, "insecure"),
        ),
        tls,
        root.read_bytes() if root else None,
    )


def _flag(config: dict[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"serve config {key!r} must be true or false, got {value!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Start the controller, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    try:
        config = json.loads(args.config.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.config} is not valid JSON: {exc}") from exc
    if args.port is not None:
        config["port"] = args.port
    if args.journal is not None:
        config["journal"] = str(args.journal.resolve())
    base = args.config.resolve().parent
    spawned: list[NodeProcess] = []
    try:
        if isinstance(config.get("nodes"), int):  # local demo: start the nodes too (they die with us on SIGTERM)
            if "secret_file" not in config:
                raise ValueError("serve config needs 'secret_file'")
            for _ in range(config["nodes"]):
                spawned.append(NodeProcess(base / str(config["secret_file"])))
            config["nodes"] = [p.address for p in spawned]
        return _serve(build_controller(config, base))
    finally:
        for p in spawned:
            p.kill()


def _serve(controller: Controller) -> int:
    def start() -> str:
        controller.start()
        return controller.address

    return serve_until_signal("serve", "controller", start, controller.stop, (OSError, EdgeError, ValueError))
