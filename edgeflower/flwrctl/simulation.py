"""A run in Flower's Simulation Engine: a local SuperLink started for it, the run followed, everything stopped."""

from __future__ import annotations

import json
import os
import subprocess
from logging import ERROR, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from edgeflower.flwrctl.checks import invalid_run_config, unknown_run_config_keys
from edgeflower.flwrctl.home import DEFAULT_SIM_CONNECTION, exe, flower_env, free_port, write_connections
from edgeflower.flwrctl.outcome import FlwrCtlError, RunOutcome
from edgeflower.flwrctl.processes import kill_process_tree, stop_local_superlink, wait_http_health
from edgeflower.flwrctl.runs import execute

__all__ = [
    "RAY_STARTUP_FAILURES",
    "SIMULATION_RUNTIME_CRASH",
    "record_retries",
    "run_simulation",
    "runtime_crash_cause",
    "runtime_crashed",
    "start_local_superlink",
]


def run_simulation(
    app_dir: Path,
    home: Path,
    num_supernodes: int = 2,
    run_config: dict[str, Any] | None = None,
    timeout: float = 600.0,
    *,
    num_cpus: int = 1,
    num_gpus: float = 0.0,
    ray_num_cpus: int | None = None,
    connection: str = DEFAULT_SIM_CONNECTION,
    port: int | None = None,
    poll_interval: float = 3.0,
    stream: bool = False,
) -> RunOutcome:
    """Run a Flower App in the Simulation Engine and wait for its final status.

    Writes ``home/config.toml``, starts the local simulation SuperLink ``flwr`` would start (on a free port),
    submits the app to it as ``flwr run <app_dir> <connection>`` would, follows the run's log to its end, reads the
    final status and the whole log, and always stops the SuperLink and its descendants (ServerApp, Ray).

    Parameters
    ----------
    app_dir : Path
        Flower App directory.
    home : Path
        Project-local ``FLWR_HOME``.
    num_supernodes : int
        Number of simulated SuperNodes (``context.node_config`` gets
        ``partition-id`` in ``[0, num_supernodes)`` and ``num-partitions``).
    run_config : dict[str, Any] | None
        ``--run-config`` overrides (keys must exist in ``[tool.flwr.app.config]``).
    timeout : float
        Overall timeout in seconds.
    num_cpus : int
        Ray CPUs per ClientApp (``client-resources-num-cpus``; integer in 1.42).
    num_gpus : float
        Ray GPUs per ClientApp.
    ray_num_cpus : int | None
        Total CPUs given to Ray (``init-args-num-cpus``); ``None`` lets Ray detect them.
    connection : str
        Connection name to write/use.
    port : int | None
        Local SuperLink HTTP port; a free one is chosen if omitted.
    poll_interval : float
        Seconds between status polls.
    stream : bool
        Follow the run's log on stdout while it runs (``RunOutcome.logs`` is then empty).

    Returns
    -------
    RunOutcome
        Final status, run ID, logs and elapsed time.
    """
    home = Path(home).expanduser().resolve()
    refused = unknown_run_config_keys(Path(app_dir), run_config) or invalid_run_config(Path(app_dir), run_config)
    if refused:
        log(ERROR, "flwrctl: %s", refused)
        return RunOutcome("not-started", None, details=refused)
    stop_local_superlink(home)  # stale SuperLink from an interrupted earlier call
    port = port or free_port()
    env = flower_env(home, local_superlink_port=port)
    write_connections(
        home,
        sim_name=connection,
        num_supernodes=num_supernodes,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        embed_options=False,
    )
    federation_config: dict[str, Any] = {
        "num-supernodes": int(num_supernodes),
        "client-resources-num-cpus": int(num_cpus),
        "client-resources-num-gpus": float(num_gpus),
    }
    if ray_num_cpus is not None:
        federation_config["init-args-num-cpus"] = int(ray_num_cpus)
    crashes: list[dict[str, Any]] = []
    for attempt in range(2):
        outcome = _run_once(
            app_dir, home, connection, env, run_config, federation_config, timeout, poll_interval, stream
        )
        cause = runtime_crash_cause(outcome)
        if outcome.ok or attempt or not cause:
            break
        log(
            WARNING,
            "flwrctl: run %s: Ray failed to start (%s), a cause outside the app (a machine too busy for Ray's "
            "fixed startup window); retrying once",
            outcome.run_id,
            cause,
        )
        crashes.append({"run-id": outcome.run_id, "status": outcome.status, "cause": cause})
    if crashes:
        outcome.extra["runtime-retries"] = crashes
        record_retries(run_config, outcome, crashes)
    return outcome


def record_retries(run_config: dict[str, Any] | None, outcome: RunOutcome, crashes: list[dict[str, Any]]) -> None:
    """Count the retried attempts in the final run's folder (``runtime-retries.json``), when it can be found."""
    from edgeflower.runlog import run_folder

    root = Path(str((run_config or {}).get("run-dir", "runs")))
    if not root.is_absolute():
        root = Path(os.environ.get("EDGEFLOWER_RUN_ROOT", ".")) / root
    try:
        folder = run_folder(root, outcome.run_id)
    except FileNotFoundError:
        log(WARNING, "flwrctl: no run folder of run %s under %s to count the retry in", outcome.run_id, root)
        return
    (folder / "runtime-retries.json").write_text(json.dumps({"retries": len(crashes), "attempts": crashes}, indent=2))


RAY_STARTUP_FAILURES = ("The current node timed out during startup", "wait_for_persisted_port")
"""Log markers of Ray failing to start on a machine too busy for its fixed startup windows: the raylet must register
with the GCS within 30 s (``ray._private.node``), a worker must report its port in time. Only these are retried."""

SIMULATION_RUNTIME_CRASH = "An error was encountered. Ending simulation."
"""Flower's status detail when the Simulation Runtime itself (Ray backend, actor pool) raised; an exception of the
ServerApp is reported with its own message instead, and a ClientApp's becomes an error reply."""


def runtime_crash_cause(outcome: RunOutcome) -> str:
    """Why Ray failed to start, when that ended the run (the log line of a :data:`RAY_STARTUP_FAILURES` marker);
    ``''`` for anything else: a completed run, an app's failure, or a Simulation Runtime crash of another cause
    (not retried: a crash we do not understand must be seen)."""
    if outcome.ok:
        return ""
    for line in outcome.logs.splitlines():
        for marker in RAY_STARTUP_FAILURES:
            if marker in line:
                return line[line.index(marker) :].strip()
    return ""


def runtime_crashed(outcome: RunOutcome) -> bool:
    """Whether ``outcome`` failed because Ray could not start (see :func:`runtime_crash_cause`; retried once).

    A retried run gets a new run ID, so its run folder (``...-run<run_id>``) is a new one too.
    """
    return bool(runtime_crash_cause(outcome))


LOCAL_SUPERLINK_START_S = 240.0
"""How long :func:`start_local_superlink` waits for the simulation SuperLink to serve (``flwr`` gives up after 15 s,
which a machine busy with other work exceeds)."""


def start_local_superlink(home: Path, env: dict[str, str], timeout: float = LOCAL_SUPERLINK_START_S) -> int:
    """Start the local simulation SuperLink that ``flwr run`` would start, and wait until it serves.

    The command and its ``--log-file`` are ``flwr``'s own (so :func:`find_local_superlinks` and
    :func:`stop_local_superlink` find it, and a ``flwr run . local-sim`` typed meanwhile would submit to it), on the
    port in ``env``. ``flwr`` would wait only 15 s for its start; on a busy machine that is too short ("Failed to
    start local SuperLink within 15s"), so it is started here with ``timeout``.

    Returns
    -------
    int
        The SuperLink's process id.

    Raises
    ------
    FlwrCtlError
        If it exits or does not serve within ``timeout``.
    """
    port = int(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"])
    log_file = Path(home).expanduser().resolve() / "local-superlink" / "superlink.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        exe("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{env.get('FLWR_LOCAL_CONTROL_API_PORT', port + 2)}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-file",
        str(log_file),
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http_health(f"http://127.0.0.1:{port}/health", proc, timeout)
    except FlwrCtlError as err:
        kill_process_tree(proc.pid, group=True)
        raise FlwrCtlError(f"the local SuperLink did not start within {timeout:.0f} s ({err}); see {log_file}") from err
    return proc.pid


def _run_once(
    app_dir: Path,
    home: Path,
    connection: str,
    env: dict[str, str],
    run_config: dict[str, Any] | None,
    federation_config: dict[str, Any],
    timeout: float,
    poll_interval: float,
    stream: bool,
) -> RunOutcome:
    stop_local_superlink(home)
    try:
        try:
            start_local_superlink(home, env)
        except FlwrCtlError as err:
            log(ERROR, "flwrctl: %s", err)
            return RunOutcome("not-started", None, details=str(err))
        return execute(
            Path(app_dir),
            connection,
            env,
            run_config=run_config,
            federation_config=federation_config,
            timeout=timeout,
            poll_interval=poll_interval,
            stream=stream,
        )
    finally:
        stop_local_superlink(home)


# --------------------------------------------------------------------------------------
