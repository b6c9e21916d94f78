"""Server-side parts: the edge server that trains devices' tails (:class:`EdgeServer`) and its sessions."""

from edgeflower.server.config import EdgeServerConfig
from edgeflower.server.edge import EdgeServer
from edgeflower.server.pool import EdgePool
from edgeflower.server.registry import SessionRegistry
from edgeflower.server.session import TrainingSession

__all__ = ["EdgePool", "EdgeServer", "EdgeServerConfig", "SessionRegistry", "TrainingSession"]
