"""Non-interactive control of Flower 1.42 runs (simulation and local deployment).

This module drives the public ``flwr`` / ``flower-superlink`` / ``flower-supernode``
command-line tools with a project-local ``FLWR_HOME`` so that tests, ``make run`` and
scripts can start a run, wait for it, read its final status and logs, and always clean
up every process they started.

Two entry points are provided:

* :func:`run_simulation` runs ``flwr run <app> <connection>`` against a local
  simulation SuperLink (the ``:local:`` / ``:local-in-memory:`` magic address). ``flwr``
  starts that SuperLink detached (``start_new_session=True``) on the port given by
  ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``; this module picks a free port, waits for the run
  to finish by following ``flwr log <id> <connection> --stream`` (the stream ends with the run), reads the
  status with ``flwr ls --run-id <id> --format json``, fetches the logs and finally terminates that SuperLink (found
  via ``/proc`` by its ``--log-file`` path, which lives inside our ``FLWR_HOME``) and all
  of its descendants.
* :class:`Deployment` starts a real ``flower-superlink --insecure`` plus N
  ``flower-supernode --insecure`` processes on free loopback ports (each one in its own
  process group) and runs apps against it with ``flwr run``.

Command line usage (used by the Makefile)::

    python -m edgeflower.flwrctl run-sim . --num-supernodes 2 --num-cpus 1 \\
        --run-config "num-rounds=3 lr=0.05"
    python -m edgeflower.flwrctl run-deploy . --num-supernodes 2

Both exit with status 0 only if the run ends in ``finished:completed``. Keep
``FLWR_HOME`` at ``<repo>/.flwr`` (the default): FAB building skips ``.flwr/**`` but would
otherwise package ``config.toml`` and the extracted ``apps/`` copies found in any other
in-repo home directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import tomli_w
from flwr.common.logger import log

__all__ = [
    "STATUS_COMPLETED",
    "Deployment",
    "FlwrCtlError",
    "RunOutcome",
    "drop_flower_noise",
    "fetch_logs",
    "find_local_superlinks",
    "flower_env",
    "follow_run",
    "format_config_overrides",
    "free_port",
    "get_run_status",
    "invalid_run_config",
    "kill_process_tree",
    "main",
    "run_failures",
    "run_simulation",
    "runtime_crash_cause",
    "runtime_crashed",
    "start_run",
    "stop_local_superlink",
    "unknown_run_config_keys",
    "wait_for_run",
    "write_connections",
]

STATUS_COMPLETED = "finished:completed"
"""Status string reported by ``flwr ls`` for a successfully completed run."""

DEFAULT_SIM_CONNECTION = "local-sim"
DEFAULT_DEPLOYMENT_CONNECTION = "local-deployment"
_BIN_DIR = Path(sys.executable).parent

FLOWER_NOISE = (
    "Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    "To change federation size, use the following command:",
    "flwr federation simulation-config ",
)
"""Lines Flower's ``flwr-simulation`` process logs on every run, dropped from the streamed and fetched logs.

flwr 1.42 logs them unconditionally (``flwr/simulation/app.py``, ``run_simulation_process``), also when the size
is set: :func:`run_simulation` passes ``--federation-config num-supernodes=N``, and Flower's next line (``Federation
... (N simulated SuperNodes)``) shows N was honoured, so the "changed from 10 to 2" warning and the resize hint do
not apply. No connection option avoids them, and they are logged in Flower's process before any of our code runs,
so they are dropped where we read the log stream."""


def drop_flower_noise(text: str) -> str:
    """``text`` without the lines of :data:`FLOWER_NOISE` (every other line kept as it is)."""
    return "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in FLOWER_NOISE))


_LOCAL_SUPERLINK_PROCESS_NAMES = (
    "flower-superlink",
    "flower-superexec",
    "flower-supernode",
    "flwr-simulation",
    "flwr-serverapp",
    "flwr-clientapp",
    "ray",
    "raylet",
    "gcs_server",
)


class FlwrCtlError(RuntimeError):
    """Raised when a Flower CLI invocation or process management step fails."""


@dataclass
class RunOutcome:
    """Result of a Flower run.

    Attributes
    ----------
    status : str
        Final status as reported by ``flwr ls`` (e.g. ``"finished:completed"``,
        ``"finished:failed"``, ``"finished:stopped"``), or ``"timeout"`` /
        ``"not-started"`` when the run never reached a final state.
    run_id : int | None
        The run ID assigned by the SuperLink, if the run was started.
    logs : str
        ServerApp-side logs retrieved with ``flwr log`` (in deployment mode the
        SuperNode logs are appended).
    elapsed : float
        Wall-clock seconds from submitting the run to its final status.
    details : str
        ``status-details`` reported by the SuperLink (e.g. the exception message).
    cli_output : str
        Combined stdout/stderr of the ``flwr run`` invocation.
    """

    status: str
    run_id: int | None
    logs: str = ""
    elapsed: float = 0.0
    details: str = ""
    cli_output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the run finished with ``finished:completed``."""
        return self.status == STATUS_COMPLETED


# --------------------------------------------------------------------------------------
# Environment and configuration
# --------------------------------------------------------------------------------------
def _exe(name: str) -> str:
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


# --------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------
def _read_proc(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:
        return b""


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _ppid(pid: int) -> int | None:
    stat = _read_proc(pid, "stat").decode(errors="replace")
    if not stat:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _alive(pid: int) -> bool:
    state = _read_proc(pid, "stat").decode(errors="replace")
    if not state:
        return False
    try:
        return state.rsplit(")", 1)[1].split()[0] != "Z"
    except IndexError:
        return False


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_process_tree(pid: int, *, group: bool = False, grace: float = 5.0) -> None:
    """Terminate ``pid`` and all of its descendants (SIGTERM, then SIGKILL).

    Parameters
    ----------
    pid : int
        Root process (or process group leader when ``group`` is true).
    group : bool
        Also signal the process group ``pid`` (processes started with
        ``start_new_session=True``).
    grace : float
        Seconds to wait after SIGTERM before sending SIGKILL.
    """
    tree = [pid, *_descendants(pid)]
    for target in tree:
        _signal(target, signal.SIGTERM, False)
    if group:
        _signal(pid, signal.SIGTERM, True)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    # Children may have spawned more processes meanwhile.
    tree += [d for p in list(tree) for d in _descendants(p) if d not in tree]
    for target in tree:
        if _alive(target):
            _signal(target, signal.SIGKILL, False)
    if group:
        _signal(pid, signal.SIGKILL, True)


def find_local_superlinks(home: Path) -> list[int]:
    """Find PIDs of local SuperLinks that ``flwr`` auto-started for ``home``.

    ``flwr`` writes no pid file; it starts ``flower-superlink ... --log-file
    <FLWR_HOME>/local-superlink/superlink.log``, so the log path identifies it.

    Parameters
    ----------
    home : Path
        The Flower home directory.

    Returns
    -------
    list[int]
        Matching process IDs (usually zero or one).
    """
    marker = str(Path(home).expanduser().resolve() / "local-superlink" / "superlink.log")
    pids = []
    for pid in _all_pids():
        argv = _read_proc(pid, "cmdline").split(b"\0")
        args = [a.decode(errors="replace") for a in argv]
        if any(a.endswith("flower-superlink") for a in args[:2]) and marker in args:
            pids.append(pid)
    return pids


def _stray_processes(home: Path) -> list[int]:
    """Flower/Ray processes whose environment has ``FLWR_HOME=<home>``."""
    needle = f"FLWR_HOME={Path(home).expanduser().resolve()}".encode()
    me = os.getpid()
    ancestors = set()
    cur: int | None = me
    while cur and cur not in ancestors:
        ancestors.add(cur)
        cur = _ppid(cur)
    found = []
    for pid in _all_pids():
        if pid in ancestors:
            continue
        if needle not in _read_proc(pid, "environ").split(b"\0"):
            continue
        cmd = _read_proc(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace")
        if any(name in cmd for name in _LOCAL_SUPERLINK_PROCESS_NAMES):
            found.append(pid)
    return found


def stop_local_superlink(home: Path, *, grace: float = 5.0) -> list[int]:
    """Stop the detached local SuperLink for ``home`` and everything it spawned.

    Parameters
    ----------
    home : Path
        The Flower home directory the SuperLink was started with.
    grace : float
        Seconds to wait after SIGTERM before SIGKILL.

    Returns
    -------
    list[int]
        PIDs that were signalled.
    """
    killed: list[int] = []
    for pid in find_local_superlinks(home):
        log(INFO, "flwrctl: stopping local SuperLink pid=%s", pid)
        killed.append(pid)
        kill_process_tree(pid, group=True, grace=grace)
    for pid in _stray_processes(home):
        if _alive(pid):
            log(WARNING, "flwrctl: killing stray Flower process pid=%s", pid)
            killed.append(pid)
            kill_process_tree(pid, grace=grace)
    return killed


# --------------------------------------------------------------------------------------
# flwr CLI wrappers
# --------------------------------------------------------------------------------------
def _flwr(
    args: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [_exe("flwr"), *args]
    try:
        return subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise FlwrCtlError(f"`{shlex.join(cmd)}` timed out after {timeout}s") from err


def _parse_json(stdout: str) -> dict[str, Any]:
    start = stdout.find("{")
    if start < 0:
        raise FlwrCtlError(f"no JSON in flwr output:\n{stdout}")
    data: dict[str, Any] = json.loads(stdout[start:])
    return data


def start_run(
    app_dir: Path,
    connection: str,
    env: dict[str, str],
    *,
    run_config: dict[str, Any] | None = None,
    federation_config: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> tuple[int, str]:
    """Submit a run with ``flwr run <app> <connection> --format json``.

    Parameters
    ----------
    app_dir : Path
        Flower App directory (contains ``pyproject.toml``).
    connection : str
        Connection name in ``FLWR_HOME/config.toml``.
    env : dict[str, str]
        Environment from :func:`flower_env`.
    run_config : dict[str, Any] | None
        ``--run-config`` overrides.
    federation_config : dict[str, Any] | None
        ``--federation-config`` overrides (simulation only), e.g.
        ``{"num-supernodes": 2, "client-resources-num-cpus": 1}``.
    timeout : float
        Seconds allowed for building the FAB, starting the SuperLink and submitting.

    Returns
    -------
    tuple[int, str]
        The run ID and the combined CLI output.
    """
    args = ["run", str(Path(app_dir).resolve()), connection, "--format", "json"]
    for item in format_config_overrides(run_config):
        args += ["--run-config", item]
    for item in format_config_overrides(federation_config):
        args += ["--federation-config", item]
    proc = _flwr(args, env, timeout)
    output = proc.stdout + proc.stderr
    try:
        payload = _parse_json(proc.stdout)
    except (FlwrCtlError, json.JSONDecodeError) as err:
        raise FlwrCtlError(f"`flwr run` failed (rc={proc.returncode}):\n{output}") from err
    if not payload.get("success") or payload.get("run-id") is None:
        raise FlwrCtlError(f"`flwr run` did not start a run:\n{output}")
    return int(payload["run-id"]), output


def get_run_status(run_id: int, connection: str, env: dict[str, str], *, timeout: float = 60.0) -> tuple[str, str]:
    """Return ``(status, status_details)`` of a run via ``flwr ls --format json``.

    Parameters
    ----------
    run_id : int
        The run ID.
    connection : str
        Connection name.
    env : dict[str, str]
        Environment from :func:`flower_env`.
    timeout : float
        Timeout for the CLI call.

    Returns
    -------
    tuple[str, str]
        E.g. ``("running", "N/A")`` or ``("finished:failed", "ServerApp failed ...")``.
    """
    proc = _flwr(["ls", connection, "--run-id", str(run_id), "--format", "json"], env, timeout)
    payload = _parse_json(proc.stdout)
    if not payload.get("success"):
        raise FlwrCtlError(f"`flwr ls` failed: {payload}")
    for run in payload.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            return str(run["status"]), str(run.get("status-details", ""))
    raise FlwrCtlError(f"run {run_id} not found in `flwr ls` output: {payload}")


def wait_for_run(
    run_id: int,
    connection: str,
    env: dict[str, str],
    *,
    timeout: float,
    poll_interval: float = 3.0,
) -> tuple[str, str]:
    """Poll ``flwr ls`` until the run's status starts with ``finished``.

    Parameters
    ----------
    run_id : int
        The run ID.
    connection : str
        Connection name.
    env : dict[str, str]
        Environment from :func:`flower_env`.
    timeout : float
        Maximum seconds to wait; on expiry ``flwr stop`` is issued and
        ``("timeout", <last status>)`` is returned.
    poll_interval : float
        Seconds between polls (each ``flwr ls`` costs ~1 CPU-second of imports).

    Returns
    -------
    tuple[str, str]
        Final ``(status, details)``.
    """
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
    try:
        _flwr(["stop", str(run_id), connection], env, 60.0)
    except FlwrCtlError as err:
        log(WARNING, "flwrctl: `flwr stop` failed: %s", err)
    return "timeout", f"last status: {status} {details}".strip()


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

    One ``flwr log <id> <connection> --stream`` process stays open for the whole run (the SuperLink ends the
    stream when the run finishes), then a single ``flwr ls`` reads the final status. Polling ``flwr ls`` every few
    seconds instead costs about one CPU-second of imports per poll, a third of a core for as long as the run lasts.
    If the stream ends before the run does (a dropped connection), the rest of the wait polls (:func:`wait_for_run`).

    Parameters
    ----------
    run_id : int
        The run ID.
    connection : str
        Connection name.
    env : dict[str, str]
        Environment from :func:`flower_env`.
    timeout : float
        Maximum seconds to wait; on expiry the run is stopped and the status is ``"timeout"``.
    echo : bool
        Print the run's log lines as they arrive (the user watches the run).
    poll_interval : float
        Seconds between ``flwr ls`` polls should the stream end early.

    Returns
    -------
    tuple[str, str, str]
        Final status, its details, and the log text streamed while waiting.
    """
    import threading

    deadline = time.monotonic() + timeout
    cmd = [_exe("flwr"), "log", str(run_id), connection, "--stream"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    chunks: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if any(n in line for n in FLOWER_NOISE):
                continue
            chunks.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=read, name=f"flwr-log-{run_id}", daemon=True)
    reader.start()
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_process_tree(proc.pid)
    reader.join(timeout=10)
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
    return status, details, "".join(chunks)


def fetch_logs(run_id: int, connection: str, env: dict[str, str], *, timeout: float = 60.0) -> str:
    """Fetch the ServerApp logs of a (finished) run with ``flwr log --stream``.

    ``--show`` only prints the first chunk; ``--stream`` returns everything and exits
    once all logs of a finished run were received.

    Parameters
    ----------
    run_id : int
        The run ID.
    connection : str
        Connection name.
    env : dict[str, str]
        Environment from :func:`flower_env`.
    timeout : float
        Timeout for the CLI call.

    Returns
    -------
    str
        The log text ('' if it could not be retrieved).
    """
    try:
        proc = _flwr(["log", str(run_id), connection, "--stream"], env, timeout)
    except FlwrCtlError as err:
        log(WARNING, "flwrctl: could not fetch logs: %s", err)
        return ""
    return drop_flower_noise(proc.stdout + proc.stderr)


LATE_LOGS_S = 3.0
"""How long to wait before fetching a failed run's logs again (its last lines arrive after the final status)."""


def _execute(
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
    # from it: the whole log is fetched once more (one call); a streamed run's log was already shown live
    logs = "" if stream and status == STATUS_COMPLETED else (fetch_logs(run_id, connection, env) or streamed)
    if status != STATUS_COMPLETED and "Traceback" not in logs:
        time.sleep(LATE_LOGS_S)  # a failing runtime uploads its traceback after it reported the final status
        logs = fetch_logs(run_id, connection, env) or logs
    log(INFO, "flwrctl: run %s -> %s (%.1fs) %s", run_id, status, elapsed, details)
    return RunOutcome(status, run_id, logs, elapsed, details, cli_output)


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


RUN_FAILURE_MARKERS = ("edgeflower: the run failed:", "nodes failed:")
"""Log lines that tell why a run failed (the ServerApp's round summaries and its final error)."""


def run_failures(outcome: RunOutcome, limit: int = 8) -> list[str]:
    """Why a run failed: its status details, then the first log lines that say so (at most ``limit``)."""
    lines = [f"run {outcome.run_id} {outcome.status}: {outcome.details}".rstrip(": ")]
    for line in outcome.logs.splitlines():
        if len(lines) > limit:
            break
        if not any(m in line for m in RUN_FAILURE_MARKERS):
            continue
        core = line.split("nodes failed:", 1)[-1].strip()  # the nodes' messages: shown once
        if not any(core in shown for shown in lines):
            lines.append(line.strip())
    return lines


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------
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

    Writes ``home/config.toml``, runs ``flwr run <app_dir> <connection>`` (which starts a
    detached local SuperLink on a free port), polls the status, fetches the logs and
    always stops the local SuperLink and its descendants (ServerApp/Ray processes).

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
        _record_retries(run_config, outcome, crashes)
    return outcome


def _record_retries(run_config: dict[str, Any] | None, outcome: RunOutcome, crashes: list[dict[str, Any]]) -> None:
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
    :func:`stop_local_superlink` find it), on the port in ``env``; ``flwr run`` then finds it running and submits to
    it. ``flwr`` would wait only 15 s for its start; on a busy machine that is too short ("Failed to start local
    SuperLink within 15s"), so it is started here with ``timeout``.

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
        _exe("flower-superlink"),
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
        _wait_http_health(f"http://127.0.0.1:{port}/health", proc, timeout)
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
        return _execute(
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
# Deployment Engine on loopback
# --------------------------------------------------------------------------------------
def _wait_http_health(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlwrCtlError(f"process exited with code {proc.returncode} ({url})")
        try:
            if httpx.get(url, timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FlwrCtlError(f"timed out waiting for {url}")


class Deployment:
    """A SuperLink plus N SuperNodes on loopback, usable as a context manager.

    Every process is started with ``start_new_session=True`` (own process group) and
    is terminated (SIGTERM, then SIGKILL, group and descendants) on exit, even if
    startup or the run fails.

    Parameters
    ----------
    home : Path
        Project-local ``FLWR_HOME`` (logs go to ``home/deployment-logs``).
    num_supernodes : int
        Number of SuperNodes to start.
    node_configs : list[dict[str, Any]] | None
        Per-SuperNode ``--node-config``; defaults to
        ``{"partition-id": i, "num-partitions": num_supernodes}``.
    connection : str
        Connection name written to ``config.toml``.
    database : str | None
        SuperLink ``--database`` path; ``None`` keeps state in memory.
    startup_timeout : float
        Seconds to wait for all processes to become healthy.

    Examples
    --------
    >>> with Deployment(Path(".flwr-test"), num_supernodes=2) as dep:  # doctest: +SKIP
    ...     outcome = dep.run(Path("."), {"num-rounds": 1}, timeout=300)
    """

    def __init__(
        self,
        home: Path,
        num_supernodes: int = 2,
        *,
        node_configs: list[dict[str, Any]] | None = None,
        connection: str = DEFAULT_DEPLOYMENT_CONNECTION,
        database: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.num_supernodes = num_supernodes
        self.node_configs = node_configs or [
            {"partition-id": i, "num-partitions": num_supernodes} for i in range(num_supernodes)
        ]
        if len(self.node_configs) != num_supernodes:
            raise ValueError("node_configs must have num_supernodes entries")
        self.connection = connection
        self.database = database
        self.startup_timeout = startup_timeout
        self.superlink_port = 0
        self.supernode_ports: list[int] = []
        self.log_dir = self.home / "deployment-logs"
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log_files: list[IO[bytes]] = []

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink HTTP API (Control + Fleet + Runtime)."""
        return f"127.0.0.1:{self.superlink_port}"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        logf = (self.log_dir / f"{name}.log").open("wb")
        self._log_files.append(logf)
        log(INFO, "flwrctl: starting %s: %s", name, shlex.join(cmd))
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            cmd,
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def start(self) -> Deployment:
        """Start the SuperLink and the SuperNodes and wait until they are healthy.

        Returns
        -------
        Deployment
            ``self``.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.home)
        try:
            self.superlink_port = free_port()
            cmd = [
                _exe("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.superlink_port),
                "--disable-runtime-dependency-installation",
            ]
            if self.database:
                cmd += ["--database", self.database]
            link = self._spawn("superlink", cmd)
            _wait_http_health(f"http://{self.address}/health", link, self.startup_timeout)
            write_connections(
                self.home,
                embed_options=False,
                deployment_name=self.connection,
                control_address=self.address,
                default=self.connection,
            )
            for i, node_cfg in enumerate(self.node_configs):
                port = free_port()
                self.supernode_ports.append(port)
                node_config = " ".join(format_config_overrides(node_cfg))
                node = self._spawn(
                    f"supernode-{i}",
                    [
                        _exe("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        self.address,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--node-config",
                        node_config,
                    ],
                )
                _wait_http_health(f"http://127.0.0.1:{port}/health", node, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run(
        self,
        app_dir: Path,
        run_config: dict[str, Any] | None = None,
        timeout: float = 600.0,
        *,
        poll_interval: float = 3.0,
        stream: bool = False,
    ) -> RunOutcome:
        """Run an app on this deployment and wait for its final status.

        Parameters
        ----------
        app_dir : Path
            Flower App directory.
        run_config : dict[str, Any] | None
            ``--run-config`` overrides.
        timeout : float
            Overall timeout in seconds.
        poll_interval : float
            Seconds between status polls.
        stream : bool
            Follow the ServerApp's log on stdout while it runs (``logs`` then holds only the SuperNode logs).

        Returns
        -------
        RunOutcome
            Outcome; ``logs`` holds ServerApp logs followed by the SuperNode logs
            (ClientApp stdout ends up in the SuperNode logs).
        """
        if not self._procs:
            raise FlwrCtlError("Deployment not started")
        outcome = _execute(
            Path(app_dir),
            self.connection,
            self.env,
            run_config=run_config,
            federation_config=None,
            timeout=timeout,
            poll_interval=poll_interval,
            stream=stream,
        )
        for f in self._log_files:
            f.flush()
        parts = [outcome.logs]
        for i in range(self.num_supernodes):
            path = self.log_dir / f"supernode-{i}.log"
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(f"\n===== supernode-{i} ({path}) =====\n{text}")
        outcome.logs = "".join(parts)
        outcome.extra["log_dir"] = str(self.log_dir)
        return outcome

    def stop(self) -> None:
        """Terminate all processes (SuperNodes first, then the SuperLink)."""
        for proc in reversed(self._procs):
            if proc.poll() is None or _descendants(proc.pid):
                kill_process_tree(proc.pid, group=True)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        for f in self._log_files:
            f.close()
        self._log_files.clear()
        for pid in _stray_processes(self.home):
            kill_process_tree(pid)

    def __enter__(self) -> Deployment:
        """Start the deployment."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the deployment."""
        self.stop()


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _parse_kv(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    from flwr.common.config import parse_config_args  # pylint: disable=C0415

    return dict(parse_config_args([text]))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m edgeflower.flwrctl`` (``run-sim``, ``run-deploy``)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m edgeflower.flwrctl",
        description="Run the Flower app and wait for its final status (exit 0 only if it completed).",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    helps = {
        "run-sim": "run in Flower's Simulation Engine (a local SuperLink, stopped afterwards)",
        "run-deploy": "run on a loopback Deployment Engine (SuperLink + SuperNodes, stopped afterwards)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=fmt)
        p.add_argument("app_dir", nargs="?", default=".", help="Flower app directory")
        p.add_argument("--home", default=".flwr", help="FLWR_HOME (keep it `.flwr`: excluded from FABs)")
        p.add_argument("--num-supernodes", type=int, default=2, help="SuperNodes (one data partition each)")
        p.add_argument("--run-config", default="", help='overrides, e.g. "num-rounds=3 lr=0.1"')
        p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is given up")
        p.add_argument("--logs", default="", help="write the run logs to this file")
        p.add_argument("--stream", action="store_true", help="follow the run's log live")
        if name == "run-sim":
            p.add_argument("--num-cpus", type=int, default=1, help="CPUs per simulated ClientApp")
            p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per simulated ClientApp")
            p.add_argument(
                "--ray-cpus", type=int, default=None, help="CPUs Ray may use (fewer: fewer ClientApps side by side)"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m edgeflower.flwrctl``).

    Parameters
    ----------
    argv : list[str] | None
        Arguments (defaults to ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if the run finished with ``finished:completed``, 1 otherwise.
    """
    args = build_parser().parse_args(argv)
    run_config = _parse_kv(args.run_config)
    try:
        outcome = _run_command(args, run_config)
    except KeyboardInterrupt:  # Ctrl-C: what we started was stopped on the way out (finally / __exit__)
        print("\nflwrctl: interrupted; stopped the SuperLink, SuperNodes and runs it started", file=sys.stderr)
        return 130
    return _finish(args, outcome)


def _run_command(args: argparse.Namespace, run_config: dict[str, Any]) -> RunOutcome:
    if args.cmd == "run-sim":
        outcome = run_simulation(
            Path(args.app_dir),
            Path(args.home),
            args.num_supernodes,
            run_config,
            args.timeout,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            ray_num_cpus=args.ray_cpus,
            stream=args.stream,
        )
    else:
        with Deployment(Path(args.home), args.num_supernodes) as dep:
            outcome = dep.run(Path(args.app_dir), run_config, args.timeout, stream=args.stream)
    return outcome


def _finish(args: argparse.Namespace, outcome: RunOutcome) -> int:
    if args.logs:
        Path(args.logs).write_text(outcome.logs, encoding="utf-8")
    elif not args.stream:
        sys.stdout.write(outcome.logs)
    print(f"run_id={outcome.run_id} status={outcome.status} elapsed={outcome.elapsed:.1f}s details={outcome.details}")
    if not outcome.ok and outcome.cli_output:
        print(outcome.cli_output, file=sys.stderr)
    if not outcome.ok:
        for line in run_failures(outcome):
            print(line, file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
