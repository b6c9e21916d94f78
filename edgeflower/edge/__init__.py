"""Server-side parts: the edge server that trains devices' tails (:class:`EdgeServer`) and its sessions."""

from edgeflower.edge.config import EdgeServerConfig
from edgeflower.edge.pool import EdgePool
from edgeflower.edge.registry import SessionRegistry
from edgeflower.edge.server import EdgeServer
from edgeflower.edge.session import TrainingSession

__all__ = ["EdgePool", "EdgeServer", "EdgeServerConfig", "SessionRegistry", "TrainingSession"]
