"""Flower's Control API, called in this process: submit a run, read its status, stream its logs, stop it.

``flwr run``, ``flwr ls`` and ``flwr log`` are thin clients of the SuperLink's Control API (protobuf over HTTP).
Spawning them costs a Python start and Flower's imports each time (about 2 CPU-seconds a call), and ``flwr run``
also walks the whole app directory, ``.venv`` included, to build the FAB (6 s on this repository). Here the same
requests go out from this process, with the FAB built from the files Flower would package, found without entering
the directories Flower would exclude. The requests, the FAB and the interceptors are Flower's own, so the SuperLink
sees what ``flwr run`` would send.
"""

from __future__ import annotations

import hashlib
import os
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.cli.build import build_fab_from_files
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.cli.utils import build_pathspec, load_gitignore_patterns
from flwr.common.config import get_metadata_from_config, parse_config_args
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import (  # pylint: disable=no-name-in-module
    ListRunsRequest,
    StartRunRequest,
    StopRunRequest,
    StreamLogsRequest,
)
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.utils import simulation_config_from_json

from edgeflower.flwrctl.home import format_config_overrides
from edgeflower.flwrctl.outcome import FlwrCtlError

__all__ = ["ControlClient", "app_files", "build_app_fab", "connected", "connection_address"]

LOCAL_ADDRESSES = (":local:", ":local-in-memory:")
"""Flower's magic addresses of the local simulation SuperLink (served on ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``)."""


def app_files(app_dir: Path) -> dict[str, Path]:
    """The files under ``app_dir`` that Flower's FAB rules may keep, by relative POSIX path.

    Directories that ``.gitignore`` or Flower's own exclusions (``.venv``, ``.flwr``, ``__pycache__``) drop as a
    whole are not entered; every remaining file is listed, and :func:`build_app_fab` applies Flower's full rules to
    them, so the FAB equals the one ``flwr run`` builds (``tests/test_flwrctl_units.py`` checks it).
    """
    root = Path(app_dir).expanduser().resolve()
    ignore = root / ".gitignore"
    patterns = load_gitignore_patterns(ignore.read_bytes() if ignore.is_file() else b"")
    pruned = build_pathspec((*patterns, *APP_PUBLISH_EXCLUDE_PATTERNS))
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(root)
        dirnames[:] = [
            d for d in dirnames if not (here / d).is_symlink() and not pruned.match_file(f"{(rel / d).as_posix()}/")
        ]
        for name in filenames:
            path = here / name
            if not path.is_symlink():
                files[(rel / name).as_posix()] = path
    return files


def build_app_fab(app_dir: Path) -> tuple[Fab, dict[str, Any]]:
    """The FAB of the app in ``app_dir`` and its parsed ``pyproject.toml``."""
    files = app_files(app_dir)
    fab_bytes, _ = build_fab_from_files(files)
    with open(Path(app_dir) / "pyproject.toml", "rb") as fh:
        config = tomllib.load(fh)
    return Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {}), config


def connection_address(connection: str, env: dict[str, str]) -> tuple[str, bool, bytes | None]:
    """``(host:port, insecure, root certificates)`` of the SuperLink connection ``connection``.

    Read from ``<FLWR_HOME>/config.toml`` of ``env`` (see :func:`edgeflower.flwrctl.write_connections`); a local
    magic address resolves to ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` of ``env``, as ``flwr`` resolves it.
    """
    path = Path(env["FLWR_HOME"]) / "config.toml"
    try:
        with open(path, "rb") as fh:
            entry = tomllib.load(fh)["superlink"][connection]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise FlwrCtlError(f"no SuperLink connection '{connection}' in {path}") from err
    address = str(entry["address"])
    if address in LOCAL_ADDRESSES:
        return f"127.0.0.1:{env['FLWR_LOCAL_SUPERLINK_HTTP_API_PORT']}", True, None
    certificates = entry.get("root-certificates")
    return address, bool(entry.get("insecure", False)), Path(certificates).read_bytes() if certificates else None


class ControlClient:
    """A client of one SuperLink's Control API, used from this process.

    Parameters
    ----------
    address : str
        ``host:port`` of the SuperLink's HTTP API.
    insecure : bool
        Plain HTTP (a local or loopback SuperLink started with ``--insecure``).
    root_certificates : bytes | None
        PEM certificates to verify the SuperLink's TLS certificate with.
    """

    def __init__(self, address: str, *, insecure: bool = True, root_certificates: bytes | None = None) -> None:
        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address,
            insecure=insecure,
            root_certificates=None if insecure else root_certificates,
            interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
        )

    @classmethod
    def for_connection(cls, connection: str, env: dict[str, str]) -> ControlClient:
        """The client of the SuperLink that connection ``connection`` of ``env``'s Flower home names."""
        address, insecure, certificates = connection_address(connection, env)
        return cls(address, insecure=insecure, root_certificates=certificates)

    def start_run(
        self,
        app_dir: Path,
        run_config: dict[str, Any] | None = None,
        federation_config: dict[str, Any] | None = None,
    ) -> int:
        """Submit the app in ``app_dir`` as a new run, as ``flwr run`` does; its run id.

        ``run_config`` overrides keys of ``[tool.flwr.app.config]``; ``federation_config`` the simulation's
        federation settings (``{"num-supernodes": 2, "client-resources-num-cpus": 1}``).
        """
        fab, config = build_app_fab(app_dir)
        get_metadata_from_config(config)  # a KeyError here: not a Flower app (no publisher, name or version)
        overrides = format_config_overrides(run_config)
        federation = {key.replace("-", "_"): value for key, value in (federation_config or {}).items()}
        request = StartRunRequest(
            fab=fab_to_proto(fab),
            override_config=user_config_to_proto(parse_config_args(overrides)),
            federation="",
            override_federation_config=simulation_config_from_json(federation) if federation else None,
            app_spec="",
        )
        response = self._client.StartRun(request)
        if not response.HasField("run_id"):
            raise FlwrCtlError(f"the SuperLink at {self.address} did not start a run")
        return int(response.run_id)

    def status(self, run_id: int) -> tuple[str, str]:
        """``(status, details)`` of run ``run_id``, as ``flwr ls`` shows them (``"finished:completed"``, ...)."""
        response = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        run = response.run_dict.get(run_id)
        if run is None:
            raise FlwrCtlError(f"run {run_id} is not known to the SuperLink at {self.address}")
        status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
        return status, run.status.details or "N/A"

    def logs(self, run_id: int, after: float = 0.0) -> Iterator[tuple[str, float]]:
        """The log text of run ``run_id`` written after timestamp ``after``, chunk by chunk with its timestamp.

        The SuperLink ends the stream when the run has finished and every log line it holds was sent.
        """
        for response in self._client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
            yield response.log_output, float(response.latest_timestamp)

    def stop_run(self, run_id: int) -> None:
        """Stop run ``run_id`` (as ``flwr stop``)."""
        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        """Close the HTTP connections (an open log stream ends with an error)."""
        self._client.close()

    def __enter__(self) -> ControlClient:
        """This client."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()


@contextmanager
def connected(connection: str, env: dict[str, str], timeout: float, doing: str) -> Iterator[ControlClient]:
    """A client of connection ``connection``, closed on exit, and after ``timeout`` seconds at the latest (a
    blocked call or an open log stream then ends with an error). Any error but :class:`FlwrCtlError` becomes one
    that says what was being done (``doing``)."""
    client = ControlClient.for_connection(connection, env)
    timer = threading.Timer(max(0.0, timeout), client.close)
    timer.daemon = True
    timer.start()
    try:
        yield client
    except FlwrCtlError:
        raise
    except Exception as err:  # httpx, protobuf or Flower's own errors: one readable message
        raise FlwrCtlError(f"{doing} failed: {err}") from err
    finally:
        timer.cancel()
        client.close()
