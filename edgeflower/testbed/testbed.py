"""A real-network testbed: SuperLink, edge servers and SuperNodes in their own network namespaces.

:class:`Testbed` builds a :class:`~edgeflower.testbed.topology.Topology`, writes the credentials (token secret, TLS
certificate for the edge servers), starts ``flower-superlink`` in the ``link`` namespace, ``edgeflower edge-server``
(TLS on; edge id ``edge-<i>``, the other edge servers its migration peers) in each ``edge-<i>`` namespace and
``flower-supernode`` in each ``dev-<i>`` namespace (all with ``ip netns exec``), and runs apps with ``flwr run`` from
inside the ``link`` namespace. Device links are shaped with ``tbf`` from the same link settings the emulator uses;
round-based schedules and injected faults are applied while a run goes (:mod:`edgeflower.testbed.faults`).
:meth:`Testbed.stop` always kills every process in its namespaces and deletes them, also after a failure or Ctrl-C; a
testbed brought up by one process can be run and torn down by another through its state file (``edgeflower testbed
up/run/down``).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
from flwr.common.logger import log

from edgeflower.flwrctl import (
    RunOutcome,
    fetch_logs,
    flower_env,
    follow_run,
    format_config_overrides,
    kill_process_tree,
    start_run,
    write_connections,
)
from edgeflower.testbed.certs import write_credentials
from edgeflower.testbed.faults import Fault, RunWatcher
from edgeflower.testbed.links import LINK_KEYS, app_link_config, device_schedules
from edgeflower.testbed.netns import in_netns, namespace_exists, namespace_pids, require_privileges
from edgeflower.testbed.topology import Topology
from edgeflower.transport.channel import format_address
from edgeflower.transport.emulation import LinkProfile

__all__ = ["STATE_FILE", "Testbed"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STATE_FILE = "testbed.json"
CONNECTION = "testbed"
SUPERLINK_PORT = 9093
SUPERNODE_PORT = 9094
EDGE_PORT = 50051


def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


class Testbed:
    """SuperLink, edge servers and SuperNodes on separate network stacks joined by shaped links.

    Parameters
    ----------
    workdir : Path
        Holds the state file, credentials, the Flower home, process logs and run folders.
    num_edges, num_devices : int
        Edge-server hosts and device hosts.
    link_config : mapping, optional
        The emulator's link keys (``link-profiles``, ``link-trace``, ``link-schedules``): their bandwidth is shaped
        by the kernel, their latency stays in code (see :mod:`edgeflower.testbed.links`).
    startup_timeout_s : float
        How long each process may take to come up.
    prefix : str, optional
        Namespace name prefix (random by default).
    flower : bool
        Start the SuperLink and SuperNodes (``False``: the network and the edge servers only, for probes).

    Examples
    --------
    >>> with Testbed(Path("/tmp/tb"), link_config={"link-profiles": "10/10/0"}) as tb:  # doctest: +SKIP
    ...     outcome = tb.run(Path("."), {"mode": "split", "num-rounds": 2})
    """

    def __init__(
        self,
        workdir: Path,
        num_edges: int = 1,
        num_devices: int = 2,
        link_config: Mapping[str, Any] | None = None,
        startup_timeout_s: float = 90.0,
        prefix: str | None = None,
        flower: bool = True,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.link_config = {k: v for k, v in (link_config or {}).items() if k in LINK_KEYS}
        self.schedules = device_schedules(self.link_config, num_devices)
        links = [s.at(1) for s in self.schedules]
        kw = {"prefix": prefix} if prefix else {}
        self.topology = Topology(num_edges, num_devices, links, **kw)
        self.startup_timeout_s = startup_timeout_s
        self.flower = flower
        self.home = self.workdir / "flwr-home"
        self.log_dir = self.workdir / "logs"
        self.files: dict[str, Path] = {}
        self.processes: dict[str, int] = {}
        self._popen: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.env: dict[str, str] = {}

    # ----------------------------------------------------------------------------------------------- addresses
    @property
    def superlink_address(self) -> str:
        """The SuperLink's Fleet/Control address as the other hosts reach it."""
        return f"{self.topology.host('link').address}:{SUPERLINK_PORT}"

    @property
    def edge_addresses(self) -> list[str]:
        """``host:port`` of each edge server (TLS)."""
        return [f"{h.address}:{EDGE_PORT}" for h in self.topology.edges()]

    def app_config(self, run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``run_config`` plus what running on this testbed takes: the external edge servers with their secret and
        certificate, and the link keys rewritten to latency-only (the kernel shapes the bandwidth)."""
        cfg = dict(run_config or {})
        if any(k in cfg for k in LINK_KEYS):
            raise ValueError("give the link settings to the testbed (link_config), not to run(): it shapes them")
        cfg.update(app_link_config(self.schedules))
        cfg.update(
            {
                "edge-addresses": ",".join(self.edge_addresses),
                "edge-secret-file": str(self.files["secret"]),
                "edge-root-cert": str(self.files["cert"]),
            }
        )
        cfg.setdefault("run-dir", str(self.workdir / "runs"))
        cfg.setdefault("min-nodes", self.topology.num_devices)
        return cfg

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> Testbed:
        """Check privileges, build the network, start every process and wait until each is healthy.

        Raises
        ------
        PrivilegeError
            Without root, iproute2 or kernel support (nothing is started; no fallback to loopback).
        """
        require_privileges()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.env = flower_env(self.home)
        try:
            self.topology.create()
            self._save()
            addresses = [h.address for h in self.topology.edges()] + ["127.0.0.1"]  # + each namespace's loopback
            self.files = write_credentials(self.workdir / "credentials", addresses)
            if self.flower:
                self._start_superlink()
            peers = self.edge_peers()
            edges = self.topology.edges()
            waits = [self._start_edge(i, h.namespace, h.address, peers=peers) for i, h in enumerate(edges)]
            if self.flower:  # all start at once (they come up in parallel), then each is waited for
                waits += [self._start_supernode(i, h.namespace) for i, h in enumerate(self.topology.devices())]
            for wait in waits:
                wait()
            self._save()
        except BaseException:
            self.stop()
            raise
        log(INFO, "testbed %s up: %s", self.topology.prefix, self.describe())
        return self

    def _spawn(self, name: str, namespace: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        logf = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(logf)
        full = ["ip", "netns", "exec", namespace, *cmd]
        log(INFO, "testbed: starting %s: %s", name, shlex.join(full))
        proc = subprocess.Popen(
            full, env=self.env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self._popen.append(proc)
        self.processes[name] = proc.pid
        return proc

    def _wait_health(self, name: str, namespace: str, url: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s  # from now: the waits before ran in parallel

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=1.0).is_success
            except httpx.HTTPError:
                return False

        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            if in_netns(namespace, healthy, timeout_s=10):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{name} not healthy after {self.startup_timeout_s:.0f} s:\n{self.log_tail(name)}")

    def _start_superlink(self) -> None:
        ns = self.topology.host("link").namespace
        proc = self._spawn(
            "superlink",
            ns,
            [_exe("flower-superlink"), "--insecure", "--host", "0.0.0.0", "--port", str(SUPERLINK_PORT),
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        self._wait_health("superlink", ns, f"http://127.0.0.1:{SUPERLINK_PORT}/health", proc)
        write_connections(
            self.home,
            embed_options=False,
            deployment_name=CONNECTION,
            control_address=f"127.0.0.1:{SUPERLINK_PORT}",
            default=CONNECTION,
        )

    def start_loopback_edge(self, host: str, port: int = EDGE_PORT + 1) -> str:
        """Start one more edge server (TLS, same secret) on the loopback of ``host``'s namespace, for comparisons
        without the shaped link (in-code emulation); wait until it serves; return its address."""
        ns = self.topology.host(host).namespace
        self._start_edge(f"loopback-edge-{host}", ns, "127.0.0.1", port)()
        return f"127.0.0.1:{port}"

    def edge_peers(self) -> dict[str, str]:
        """Edge id -> address of every edge server of the topology (``edge-<i>``): each one's migration peers."""
        return {f"edge-{i}": format_address(h.address, EDGE_PORT) for i, h in enumerate(self.topology.edges())}

    def _start_edge(
        self, i: int | str, namespace: str, address: str, port: int = EDGE_PORT, peers: Mapping[str, str] | None = None
    ) -> Callable[[], None]:
        """Start edge server ``i`` (an index or a name; its edge id too) with ``peers`` (edge id -> address, itself
        left out: where it may migrate sessions to); return the wait until it serves."""
        name = f"edge-{i}" if isinstance(i, int) else i
        peer_args = [arg for peer, at in (peers or {}).items() if peer != name for arg in ("--peer", f"{peer}={at}")]
        proc = self._spawn(
            name,
            namespace,
            [sys.executable, "-m", "edgeflower.cli", "edge-server", "--host", address, "--port", str(port),
             "--edge-id", name, *peer_args, "--secret-file", str(self.files["secret"]),
             "--tls-cert", str(self.files["cert"]), "--tls-key", str(self.files["key"]),
             "--peer-root-cert", str(self.files["cert"])],
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout_s

        def wait() -> None:
            while time.monotonic() < deadline:
                if "edge server listening on" in self.log_tail(name):
                    return
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
                time.sleep(0.2)
            raise RuntimeError(f"{name} did not start within {self.startup_timeout_s:.0f} s:\n{self.log_tail(name)}")

        return wait

    def _start_supernode(self, i: int, namespace: str) -> Callable[[], None]:
        """Start SuperNode ``i``; return the wait until it is healthy."""
        name = f"supernode-{i}"
        node_config = {
            "partition-id": i,
            "num-partitions": self.topology.num_devices,
            "edge-root-cert": str(self.files["cert"]),
        }
        proc = self._spawn(
            name,
            namespace,
            [_exe("flower-supernode"), "--insecure", "--superlink", self.superlink_address,
             "--host", "127.0.0.1", "--port", str(SUPERNODE_PORT),
             "--node-config", " ".join(format_config_overrides(node_config))],
        )  # fmt: skip
        return lambda: self._wait_health(name, namespace, f"http://127.0.0.1:{SUPERNODE_PORT}/health", proc)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        """The end of process ``name``'s log."""
        for f in self._logs:
            f.flush()
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def describe(self) -> str:
        """One line: hosts, addresses and link shaping."""
        parts = []
        for h in self.topology.hosts:
            link = f" {h.link.uplink_mbps:g}/{h.link.downlink_mbps:g} Mbit/s" if h.link and not h.link.unlimited else ""
            parts.append(f"{h.name}={h.address}{link}")
        return ", ".join(parts)

    def stop(self) -> list[str]:
        """Kill every process in the testbed's namespaces, delete the namespaces; return what could not be removed.

        Idempotent; safe after a partial start and from another process (:meth:`load`).
        """
        for proc in reversed(self._popen):
            if proc.poll() is None:
                kill_process_tree(proc.pid, group=True, grace=5.0)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._popen.clear()
        for _ in range(3):  # whatever still lives in our namespaces (ClientApp/ServerApp children, stragglers)
            pids = [p for ns in self.topology.namespaces for p in namespace_pids(ns)]
            if not pids:
                break
            for pid in pids:
                kill_process_tree(pid, grace=3.0)
        for f in self._logs:
            f.close()
        self._logs.clear()
        failed = self.topology.destroy()
        left = [ns for ns in self.topology.namespaces if namespace_exists(ns)]
        if not failed and not left and (self.workdir / STATE_FILE).exists():
            (self.workdir / STATE_FILE).unlink()
        if failed or left:
            log(WARNING, "testbed: could not remove %s", failed or left)
        return failed + left

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- state file
    def _save(self) -> None:
        state = {
            "prefix": self.topology.prefix,
            "num_edges": self.topology.num_edges,
            "num_devices": self.topology.num_devices,
            "link_config": self.link_config,
            "files": {k: str(v) for k, v in self.files.items()},
            "processes": self.processes,
            "superlink": self.superlink_address,
            "edge_addresses": self.edge_addresses,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> Testbed:
        """The testbed that ``edgeflower testbed up`` left running in ``workdir`` (to run apps on or tear down).

        Raises
        ------
        FileNotFoundError
            If ``workdir`` holds no testbed.
        """
        path = Path(workdir).resolve() / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no testbed in {workdir} (no {STATE_FILE}; bring one up with `testbed up`)")
        state = json.loads(path.read_text())
        tb = cls(workdir, state["num_edges"], state["num_devices"], state["link_config"], prefix=state["prefix"])
        tb.files = {k: Path(v) for k, v in state["files"].items()}
        tb.processes = {k: int(v) for k, v in state["processes"].items()}
        tb.env = flower_env(tb.home)
        return tb

    def detach(self) -> None:
        """Leave the processes running when this object goes away (``testbed up``): close the log handles only."""
        self._popen.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    # ----------------------------------------------------------------------------------------------- shaping and faults
    def shape(self, device: int, link: LinkProfile) -> None:
        """Re-shape device ``device``'s link now (``tc qdisc change``: a bandwidth change mid-round)."""
        self.topology.shape(f"dev-{device}", link)

    def set_link(self, host: str, up: bool) -> None:
        """Unplug (``up=False``) or plug back host ``host``'s link (``dev-0``, ``edge-0``, ...)."""
        self.topology.set_link(host, up)

    # ----------------------------------------------------------------------------------------------- runs
    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
        faults: Sequence[Fault] = (),
        poll_interval: float = 2.0,
    ) -> RunOutcome:
        """Run the app with ``flwr run`` against this testbed's SuperLink; apply link schedules and ``faults``.

        Returns
        -------
        RunOutcome
            As :class:`edgeflower.flwrctl.Deployment` returns it; ``extra`` holds ``events`` (schedule changes and
            faults with their times), ``run_dir`` and ``log_dir``.
        """
        cfg = self.app_config(run_config)
        link_ns = self.topology.host("link").namespace
        t0 = time.monotonic()

        def submit() -> tuple[int, str]:
            return start_run(Path(app_dir), CONNECTION, self.env, run_config=cfg, timeout=min(timeout, 180.0))

        run_id, cli_output = in_netns(link_ns, submit, timeout_s=200)
        log(INFO, "testbed: run %s started", run_id)
        watcher = RunWatcher(self, run_id, faults)
        watcher.start()
        try:
            remaining = max(1.0, timeout - (time.monotonic() - t0))
            status, details = in_netns(
                link_ns,
                lambda: follow_run(run_id, CONNECTION, self.env, timeout=remaining, poll_interval=poll_interval)[:2],
                timeout_s=remaining + 120,
            )
        finally:
            watcher.stop()
        logs = in_netns(link_ns, lambda: fetch_logs(run_id, CONNECTION, self.env), timeout_s=90)
        outcome = RunOutcome(status, run_id, logs, time.monotonic() - t0, details, cli_output)
        outcome.extra.update(
            {"events": watcher.events, "run_dir": str(cfg["run-dir"]), "log_dir": str(self.log_dir), "config": cfg}
        )
        log(INFO, "testbed: run %s -> %s (%.1f s)", run_id, status, outcome.elapsed)
        return outcome


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into ``KeyboardInterrupt`` so ``with Testbed(...)`` tears down on them too."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
