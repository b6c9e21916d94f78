"""Network namespaces, veth pairs and ``tc`` shaping: thin, checked wrappers around ``ip`` and ``tc``.

Every command names the namespace it acts in (``ip -n NS``, ``tc -n NS``), so nothing is ever configured in the
namespace of the calling process. :func:`in_netns` runs Python code (and the processes it starts) inside a
namespace by switching one short-lived thread into it with ``setns(2)``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "NetnsError",
    "PrivilegeError",
    "in_netns",
    "ip",
    "namespace_exists",
    "namespace_pids",
    "require_privileges",
    "tc",
]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 20.0
"""Most seconds one ``ip``/``tc`` invocation may take."""


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed."""


class PrivilegeError(NetnsError):
    """The testbed cannot create network namespaces here (not root, no ``ip``/``tc``, or the kernel refuses)."""


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise PrivilegeError(f"{cmd[0]!r} is not installed (iproute2 is needed for the testbed)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(cmd)}` timed out after {COMMAND_TIMEOUT_S:.0f} s") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip [-n NS] ARGS``; raise :class:`NetnsError` on failure when ``check``."""
    return _run(["ip", *(("-n", ns) if ns else ()), *args], check)


def tc(*args: str, ns: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tc -n NS ARGS`` (always inside a namespace)."""
    return _run(["tc", "-n", ns, *args], check)


def namespace_exists(name: str) -> bool:
    """Whether the named network namespace exists (``/run/netns/NAME``)."""
    return os.path.exists(f"/run/netns/{name}")


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes living in the named namespace (``ip netns pids``)."""
    if not namespace_exists(name):
        return []
    proc = ip("netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def require_privileges() -> None:
    """Check that this process may build a testbed; raise :class:`PrivilegeError` saying what is missing.

    The testbed needs root (``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``: creating namespaces, mounting
    ``/run/netns``), ``ip`` and ``tc`` from iproute2, and a kernel with veth, bridge, the ``tbf`` and ``htb``
    qdiscs and the ``u32`` filter. A probe namespace is created and deleted to prove it; there is no fallback to
    loopback.
    """
    if os.geteuid() != 0:
        raise PrivilegeError("the testbed needs root (network namespaces and tc); run it as root or in a root CI job")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise PrivilegeError(f"{tool!r} is not installed (apt-get install iproute2)")
    probe = f"efprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except NetnsError as exc:
        raise PrivilegeError(f"cannot create a network namespace here: {exc}") from None
    try:
        ip("link", "add", "pa", "type", "veth", "peer", "name", "pb", ns=probe)
        tc("qdisc", "add", "dev", "pa", "root", "handle", "1:", "tbf", "rate", "10mbit", "burst", "16kb", "limit",
           "64kb", ns=probe)  # fmt: skip
        tc("qdisc", "add", "dev", "pa", "parent", "1:1", "handle", "10:", "htb", "default", "20", ns=probe)
        tc("filter", "add", "dev", "pa", "parent", "10:", "protocol", "ip", "prio", "1", "u32", "match", "u16",
           "0x0000", "0xff80", "at", "2", "flowid", "10:10", ns=probe)  # fmt: skip
    except NetnsError as exc:
        raise PrivilegeError(f"veth, tc tbf/htb or the u32 filter do not work in this kernel: {exc}") from None
    finally:
        ip("netns", "del", probe, check=False)


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], T], timeout_s: float | None = None) -> T:
    """Run ``fn()`` in a fresh thread switched into network namespace ``name``; return its result or raise.

    Sockets ``fn`` opens and processes it starts live in that namespace; the calling thread (and every other one)
    stays where it was. The thread ends with ``fn``, so the switched thread is never reused.

    Raises
    ------
    TimeoutError
        If ``fn`` has not returned after ``timeout_s`` (the thread is left to finish on its own).
    """
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _setns(name)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"call in namespace {name} did not return within {timeout_s} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
