"""The edge servers a ServerApp trains with: started in-process on loopback, or external ones by address."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from types import TracebackType

from flwr.common.logger import log

from edgeflower.server.edge import EdgeServer
from edgeflower.transport.auth import TokenIssuer, load_secret

__all__ = ["EdgePool"]


class EdgePool:
    """A set of edge servers and the token issuer for them; assigns nodes to edge servers.

    Use :meth:`in_process` to start ``n`` edge servers on loopback (``flwr run .`` stays self-contained) or
    :meth:`external` for ``edgeflower edge-server`` processes reachable at known addresses.

    Parameters
    ----------
    addresses : sequence of str
        ``host:port`` of each edge server.
    issuer : TokenIssuer
        Issues session tokens with the secret the edge servers share.
    edge_ids : sequence of str or None, optional
        Edge id of each server, to bind tokens to one server (``None`` = any server sharing the secret).
    servers : sequence of EdgeServer, optional
        In-process servers this pool owns and stops.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        issuer: TokenIssuer,
        edge_ids: Sequence[str | None] | None = None,
        servers: Sequence[EdgeServer] = (),
    ) -> None:
        if not addresses:
            raise ValueError("an edge pool needs at least one edge server")
        self.addresses = list(addresses)
        self.issuer = issuer
        self.edge_ids = list(edge_ids) if edge_ids is not None else [None] * len(self.addresses)
        self._servers = list(servers)
        self.assignment: dict[int, int] = {}

    @classmethod
    def in_process(cls, n: int, host: str = "127.0.0.1") -> EdgePool:
        """Start ``n`` edge servers in this process with a fresh random secret."""
        secret = secrets.token_bytes(32)
        servers = []
        try:
            for i in range(n):
                server = EdgeServer(host, 0, secret=secret, edge_id=f"edge-{i}")
                server.start()
                servers.append(server)
        except BaseException:
            for s in servers:
                s.stop()
            raise
        log(INFO, "edgeflower: started %d in-process edge servers: %s", n, ", ".join(s.address for s in servers))
        return cls([s.address for s in servers], TokenIssuer(secret), [s.edge_id for s in servers], servers)

    @classmethod
    def external(cls, addresses: Sequence[str], secret_file: str | Path) -> EdgePool:
        """Use running ``edgeflower edge-server`` processes that share the secret in ``secret_file``."""
        return cls(list(addresses), TokenIssuer(load_secret(secret_file)))

    def edge_of(self, node_id: int) -> int:
        """The edge server index of ``node_id`` (round-robin in order of first appearance, then sticky)."""
        if node_id not in self.assignment:
            self.assignment[node_id] = len(self.assignment) % len(self.addresses)
        return self.assignment[node_id]

    def move(self, node_id: int, edge: int) -> None:
        """Assign ``node_id`` to edge server ``edge`` (e.g. after the device moved)."""
        if not 0 <= edge < len(self.addresses):
            raise ValueError(f"edge index {edge} out of range 0..{len(self.addresses) - 1}")
        self.assignment[node_id] = edge

    def plan(self, run_id: int, node_id: int, server_round: int, ttl_s: float = 3600.0) -> dict[str, str]:
        """``edge-address`` and ``edge-token`` entries of a node's training plan for one round."""
        edge = self.edge_of(node_id)
        token = self.issuer.issue(run_id, node_id, server_round, self.edge_ids[edge], ttl_s)
        return {"edge-address": self.addresses[edge], "edge-token": token}

    def stop(self) -> None:
        """Stop the in-process edge servers (external ones are left running)."""
        for server in self._servers:
            server.stop()
        self._servers = []

    def __enter__(self) -> EdgePool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
