"""The processes Flower starts: found through ``/proc``, stopped with everything they spawned."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from logging import INFO, WARNING
from pathlib import Path

import httpx
from flwr.common.logger import log

from edgeflower.flwrctl.outcome import FlwrCtlError

__all__ = [
    "alive",
    "descendants",
    "find_local_superlinks",
    "kill_process_tree",
    "stop_local_superlink",
    "stray_processes",
    "wait_http_health",
]

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


def descendants(root: int) -> list[int]:
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


def alive(pid: int) -> bool:
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
    tree = [pid, *descendants(pid)]
    for target in tree:
        _signal(target, signal.SIGTERM, False)
    if group:
        _signal(pid, signal.SIGTERM, True)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.1)
    # Children may have spawned more processes meanwhile.
    tree += [d for p in list(tree) for d in descendants(p) if d not in tree]
    for target in tree:
        if alive(target):
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


def stray_processes(home: Path) -> list[int]:
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
    strays = [pid for pid in stray_processes(home) if alive(pid)]
    if strays:
        # Ray's ClientApp actors routinely outlive the SuperLink by a moment: stopping them is housekeeping (INFO);
        # anything else still running after its SuperLink stopped is worth a WARNING
        ray = all(_read_proc(pid, "cmdline").startswith(b"ray::") for pid in strays)
        what = "Ray worker(s) of the simulation" if ray else "stray Flower process(es)"
        log(INFO if ray else WARNING, "flwrctl: stopping %d %s: pid %s", len(strays), what, ", ".join(map(str, strays)))
    for pid in strays:
        killed.append(pid)
        kill_process_tree(pid, grace=grace)
    return killed


def wait_http_health(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
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
