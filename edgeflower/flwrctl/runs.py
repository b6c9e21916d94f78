"""One run on a SuperLink: submit it, follow its log to the end, read its final status and its whole log.

Each function takes a connection name and the environment of :func:`edgeflower.flwrctl.flower_env` (its
``FLWR_HOME`` holds the connection) and talks to the SuperLink's Control API from this process
(:class:`edgeflower.flwrctl.control.ControlClient`): the client is made in the calling thread, so a caller switched
into a network namespace (the testbed) reaches the SuperLink of that namespace.
"""

from __future__ import annotations

import sys
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from edgeflower.flwrctl.control import ControlClient, connected
from edgeflower.flwrctl.outcome import STATUS_COMPLETED, FlwrCtlError, RunOutcome, drop_flower_noise

__all__ = ["LATE_LOGS_S", "execute", "fetch_logs", "follow_run", "get_run_status", "start_run", "wait_for_run"]

LATE_LOGS_S = 3.0
"""How long to wait before reading a failed run's log again (its last lines arrive after the final status)."""


def start_run(
    app_dir: Path,
    connection: str,
    env: dict[str, str],
    *,
    run_config: dict[str, Any] | None = None,
    federation_config: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> tuple[int, str]:
    """Submit the app in ``app_dir`` as a run, as ``flwr run <app> <connection>`` would.

    Parameters
    ----------
    app_dir : Path
        Flower App directory (contains ``pyproject.toml``).
    connection : str
        Connection name in ``FLWR_HOME/config.toml``.
    env : dict[str, str]
        Environment from :func:`edgeflower.flwrctl.flower_env`.
    run_config : dict[str, Any] | None
        ``--run-config`` overrides.
    federation_config : dict[str, Any] | None
        ``--federation-config`` overrides (simulation only), e.g.
        ``{"num-supernodes": 2, "client-resources-num-cpus": 1}``.
    timeout : float
        Seconds allowed for building the FAB and submitting it.

    Returns
    -------
    tuple[int, str]
        The run ID and a line saying so.

    Raises
    ------
    FlwrCtlError
        If the SuperLink cannot be reached or refuses the run (its message).
    """
    with connected(connection, env, timeout, f"submitting {app_dir} to connection '{connection}'") as client:
        run_id = client.start_run(Path(app_dir).resolve(), run_config, federation_config)
    return run_id, f"Successfully started run {run_id}"


def get_run_status(run_id: int, connection: str, env: dict[str, str], *, timeout: float = 60.0) -> tuple[str, str]:
    """``(status, status_details)`` of a run, as ``flwr ls --run-id`` shows them.

    Returns
    -------
    tuple[str, str]
        E.g. ``("running", "N/A")`` or ``("finished:failed", "ServerApp failed ...")``.
    """
    with connected(connection, env, timeout, f"reading the status of run {run_id}") as client:
        return client.status(run_id)


def stop_run(run_id: int, connection: str, env: dict[str, str]) -> None:
    """Stop a run (as ``flwr stop``); a failure is logged, not raised."""
    try:
        with connected(connection, env, 60.0, f"stopping run {run_id}") as client:
            client.stop_run(run_id)
    except FlwrCtlError as err:  # the run is being given up: say so and go on
        log(WARNING, "flwrctl: stopping run %s failed: %s", run_id, err)


def wait_for_run(
    run_id: int,
    connection: str,
    env: dict[str, str],
    *,
    timeout: float,
    poll_interval: float = 3.0,
) -> tuple[str, str]:
    """Poll the run's status until it starts with ``finished``; on ``timeout`` stop it and return ``"timeout"``."""
    deadline = time.monotonic() + timeout
    status, details = "unknown", ""
    while time.monotonic() < deadline:
        try:
            status, details = get_run_status(run_id, connection, env)
        except FlwrCtlError as err:
            log(WARNING, "flwrctl: status poll failed: %s", err)
        if status.startswith("finished"):
            return status, details
        time.sleep(poll_interval)
    log(ERROR, "flwrctl: run %s timed out after %.0fs (last=%s)", run_id, timeout, status)
    stop_run(run_id, connection, env)
    return "timeout", f"last status: {status} {details}".strip()


def _read_stream(client: ControlClient, run_id: int, echo: bool) -> str:
    """The run's whole log, until the SuperLink ends the stream (or the client is closed: the caller's deadline)."""
    chunks: list[str] = []
    try:
        for text, _ in client.logs(run_id):
            kept = drop_flower_noise(text)
            chunks.append(kept)
            if echo and kept:
                sys.stdout.write(kept)
                sys.stdout.flush()
    except Exception as err:  # a closed client (the deadline) or a dropped connection: the caller decides
        log(INFO, "flwrctl: the log stream of run %s ended early (%s)", run_id, type(err).__name__)
    return "".join(chunks)


def follow_run(
    run_id: int,
    connection: str,
    env: dict[str, str],
    *,
    timeout: float,
    echo: bool = False,
    poll_interval: float = 3.0,
) -> tuple[str, str, str]:
    """Wait for a run by following its log stream: ``(status, details, streamed logs)``.

    One log stream stays open for the whole run (the SuperLink ends it when the run finishes), then one status
    request reads the final status. If the stream ends before the run does (a dropped connection), the rest of the
    wait polls (:func:`wait_for_run`).

    Parameters
    ----------
    run_id : int
        The run ID.
    connection : str
        Connection name.
    env : dict[str, str]
        Environment from :func:`edgeflower.flwrctl.flower_env`.
    timeout : float
        Maximum seconds to wait; on expiry the run is stopped and the status is ``"timeout"``.
    echo : bool
        Print the run's log lines as they arrive (the user watches the run).
    poll_interval : float
        Seconds between status polls should the stream end early.

    Returns
    -------
    tuple[str, str, str]
        Final status, its details, and the log text streamed while waiting.
    """
    deadline = time.monotonic() + timeout
    with connected(connection, env, timeout, f"following run {run_id}") as client:
        streamed = _read_stream(client, run_id, echo)
    status, details = "unknown", ""
    try:
        status, details = get_run_status(run_id, connection, env)
    except FlwrCtlError as err:
        log(WARNING, "flwrctl: status query failed: %s", err)
    if not status.startswith("finished"):
        remaining = deadline - time.monotonic()
        status, details = wait_for_run(
            run_id, connection, env, timeout=max(1.0, remaining), poll_interval=poll_interval
        )
    return status, details, streamed


def fetch_logs(run_id: int, connection: str, env: dict[str, str], *, timeout: float = 60.0) -> str:
    """The whole log of a (finished) run ('' if it could not be read), Flower's noise lines dropped."""
    try:
        with connected(connection, env, timeout, f"reading the log of run {run_id}") as client:
            return _read_stream(client, run_id, False)
    except FlwrCtlError as err:
        log(WARNING, "flwrctl: could not fetch logs: %s", err)
        return ""


def execute(
    app_dir: Path,
    connection: str,
    env: dict[str, str],
    *,
    run_config: dict[str, Any] | None,
    federation_config: dict[str, Any] | None,
    timeout: float,
    poll_interval: float,
    stream: bool = False,
) -> RunOutcome:
    """Submit, follow and read back one run: its :class:`RunOutcome` (``"not-started"`` if it was refused)."""
    t0 = time.monotonic()
    try:
        run_id, cli_output = start_run(
            app_dir,
            connection,
            env,
            run_config=run_config,
            federation_config=federation_config,
            timeout=min(timeout, 180.0),
        )
    except FlwrCtlError as err:
        log(ERROR, "flwrctl: %s", err)
        return RunOutcome("not-started", None, cli_output=str(err))
    log(INFO, "flwrctl: started run %s on connection %s", run_id, connection)
    remaining = max(1.0, timeout - (time.monotonic() - t0))
    status, details, streamed = follow_run(
        run_id, connection, env, timeout=remaining, echo=stream, poll_interval=poll_interval
    )
    elapsed = time.monotonic() - t0
    # the stream ends when the SuperLink sees the run finished, so lines written in its last moments may be missing
    # from it: the whole log is read once more (a streamed run's log was already shown live)
    logs = "" if stream and status == STATUS_COMPLETED else (fetch_logs(run_id, connection, env) or streamed)
    if status != STATUS_COMPLETED and "Traceback" not in logs:
        time.sleep(LATE_LOGS_S)  # a failing runtime uploads its traceback after it reported the final status
        logs = fetch_logs(run_id, connection, env) or logs
    log(INFO, "flwrctl: run %s -> %s (%.1fs) %s", run_id, status, elapsed, details)
    return RunOutcome(status, run_id, logs, elapsed, details, cli_output)
