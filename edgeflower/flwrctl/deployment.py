"""Flower's Deployment Engine on loopback: a SuperLink and N SuperNodes, each a process, stopped on exit."""

from __future__ import annotations

import shlex
import subprocess
from logging import INFO
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from flwr.common.logger import log

from edgeflower.flwrctl.home import (
    DEFAULT_DEPLOYMENT_CONNECTION,
    exe,
    flower_env,
    format_config_overrides,
    free_port,
    write_connections,
)
from edgeflower.flwrctl.outcome import FlwrCtlError, RunOutcome
from edgeflower.flwrctl.processes import descendants, kill_process_tree, stray_processes, wait_http_health
from edgeflower.flwrctl.runs import execute

__all__ = ["Deployment"]


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
                exe("flower-superlink"),
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
            wait_http_health(f"http://{self.address}/health", link, self.startup_timeout)
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
                        exe("flower-supernode"),
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
                wait_http_health(f"http://127.0.0.1:{port}/health", node, self.startup_timeout)
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
        outcome = execute(
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
            if proc.poll() is None or descendants(proc.pid):
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
        for pid in stray_processes(self.home):
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
