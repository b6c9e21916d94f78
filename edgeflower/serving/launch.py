"""Start inference nodes as local processes (``edgeflower infer-node``) and stop them.

Used by ``edgeflower serve`` when the config's ``nodes`` is a number, and by the failover benchmark. On several
machines, run ``edgeflower infer-node --host 0.0.0.0 --port 50061 --secret-file s`` on each instead and list their
addresses in the config.
"""

from __future__ import annotations

from pathlib import Path

from edgeflower.process import ListeningProcess

__all__ = ["READY", "NodeProcess"]

READY = "inference node listening on "
"""The line ``edgeflower infer-node`` prints once it serves."""


class NodeProcess(ListeningProcess):
    """``edgeflower infer-node`` on a free loopback port.

    Parameters
    ----------
    secret_file : Path
        The shared token secret.
    extra : str
        More ``infer-node`` arguments.
    startup_timeout_s : float
        How long to wait for the ``listening`` line.
    """

    def __init__(self, secret_file: str | Path, *extra: str, startup_timeout_s: float = 60.0) -> None:
        args = ["infer-node", "--port", "0", "--secret-file", str(secret_file), *extra]
        super().__init__(args, READY, startup_timeout_s=startup_timeout_s)
