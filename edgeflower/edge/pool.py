"""The edge servers a ServerApp trains with: started in-process on loopback, or external ones by address."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from types import TracebackType

from flwr.common.logger import log

from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.transport.auth import DEFAULT_TTL_S, ROLE_DEVICE, ROLE_MIGRATION, TokenIssuer, load_secret

__all__ = ["EdgeAssignment", "EdgePool"]


@dataclass(frozen=True)
class EdgeAssignment:
    """Where a node trains its tail in one round.

    Attributes
    ----------
    edge : int
        Index of the edge server in :attr:`EdgePool.addresses`.
    address : str
        Its ``host:port``.
    token : str
        A single-use ``device`` token for this run, node and round, bound to that edge server.
    """

    edge: int
    address: str
    token: str


def _edge_id_of(address: str, root_cert: bytes | None = None) -> str | None:
    """The edge id an external edge server reports (``None`` when it has none or cannot be reached); over TLS when
    ``root_cert`` (the PEM the nodes trust) is given."""
    from edgeflower.transport.client import EdgeClient
    from edgeflower.transport.errors import EdgeError

    try:
        with EdgeClient(address, root_cert, retries=0) as client:
            edge_id = client.health(timeout_s=5.0).edge_id or None
    except EdgeError as exc:
        log(WARNING, "edgeflower: edge server %s did not report its id (%s): tokens not bound to it", address, exc)
        return None
    if edge_id is None:
        log(WARNING, "edgeflower: edge server %s has no --edge-id: its tokens are not bound to one server", address)
    return edge_id


class EdgePool:
    """A set of edge servers and the token issuer for them; assigns nodes to edge servers.

    Use :meth:`in_process` to start ``n`` edge servers on loopback (``flwr run .`` stays self-contained) or
    :meth:`external` for ``edgeflower edge-server`` processes reachable at known addresses. :meth:`assign` gives a
    node its edge server and token for a round; a ServerApp sends them to the node in a
    :class:`~edgeflower.app.plan.NodePlan` (``edge_address``, ``edge_token``), the one contract between ServerApp
    and ClientApp, which the ClientApp reads back with ``NodePlan.from_config`` (as
    ``examples/quickstart-edgeflower`` does).

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

    Attributes
    ----------
    token_ttl_s : float
        Lifetime of the device and migration tokens the pool issues (default :data:`DEFAULT_TTL_S`); a ServerApp
        sets it to the round's timeout, so that a round's tokens outlive neither the round nor its sessions.
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
        self.token_ttl_s = DEFAULT_TTL_S

    @classmethod
    def in_process(cls, n: int, host: str = "127.0.0.1", config: EdgeServerConfig | None = None) -> EdgePool:
        """Start ``n`` edge servers in this process with a fresh random secret (``config``: their limits); each one
        migrates sessions only to the others (:meth:`EdgeServer.set_peers`)."""
        secret = secrets.token_bytes(32)
        servers = []
        try:
            for i in range(n):
                server = EdgeServer(host, 0, secret=secret, edge_id=f"edge-{i}", config=config)
                server.start()
                servers.append(server)
        except BaseException:
            for s in servers:
                s.stop()
            raise
        for server in servers:  # each migrates only to the others, at the addresses it knows them by
            server.set_peers({str(p.edge_id): p.address for p in servers if p is not server})
        log(INFO, "edgeflower: started %d in-process edge servers: %s", n, ", ".join(s.address for s in servers))
        return cls([s.address for s in servers], TokenIssuer(secret), [s.edge_id for s in servers], servers)

    @classmethod
    def external(
        cls, addresses: Sequence[str], secret_file: str | Path, root_cert: str | Path | None = None
    ) -> EdgePool:
        """Use running ``edgeflower edge-server`` processes that share the secret in ``secret_file``.

        Each server is asked for its edge id (``Health``, over TLS trusting ``root_cert`` when given) so that tokens
        are bound to it; a server without an id (or not reachable now) gets tokens any server sharing the secret
        accepts, with a WARNING.
        """
        pem = None
        if root_cert:
            try:
                pem = Path(root_cert).read_bytes()
            except OSError as exc:  # the certificate is read on the nodes; the ServerApp's host may not have it
                log(
                    WARNING,
                    "edgeflower: cannot read edge-root-cert %s here (%s): asking for edge ids in clear",
                    root_cert,
                    exc,
                )
        ids = [_edge_id_of(a, pem) for a in addresses]
        return cls(list(addresses), TokenIssuer(load_secret(secret_file)), ids)

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

    def assign(self, run_id: int, node_id: int, server_round: int, ttl_s: float | None = None) -> EdgeAssignment:
        """The node's edge server for one round, with a single-use ``device`` token for this run, node and round,
        bound to that server, valid ``ttl_s`` (default :attr:`token_ttl_s`).

        In-process edge servers are told the round (:meth:`EdgeServer.advance_round`): from now on they refuse tokens
        of this run's older rounds."""
        for server in self._servers:
            server.advance_round(run_id, server_round)
        edge = self.edge_of(node_id)
        ttl = self.token_ttl_s if ttl_s is None else ttl_s
        token = self.issuer.issue(run_id, node_id, server_round, self.edge_ids[edge], ttl, ROLE_DEVICE)
        return EdgeAssignment(edge, self.addresses[edge], token)

    def migration_token(
        self, run_id: int, node_id: int, server_round: int, edge: int, ttl_s: float | None = None
    ) -> str:
        """A ``migration`` token that lets edge server ``edge`` import (and the node resume) the node's session,
        valid ``ttl_s`` (default :attr:`token_ttl_s`)."""
        ttl = self.token_ttl_s if ttl_s is None else ttl_s
        return self.issuer.issue(run_id, node_id, server_round, self.edge_ids[edge], ttl, ROLE_MIGRATION)

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
