"""An edge server's answer to a health probe: :class:`HealthInfo`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeflower.transport.codec import Frame, Limits, encode_frame
from edgeflower.transport.fields import expect_kind, int_field, str_field

__all__ = ["HealthInfo"]


@dataclass(frozen=True)
class HealthInfo:
    """An edge server's health.

    Attributes
    ----------
    status : str
        ``"serving"`` (or ``"stopping"``).
    edge_id : str
        The server's id (empty if none).
    sessions : int
        Open sessions.
    version : int
        Wire-format version.
    """

    status: str
    edge_id: str
    sessions: int
    version: int

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``health_info`` frame."""
        return encode_frame("health_info", asdict(self), None, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> HealthInfo:
        """Parse and validate a ``health_info`` frame."""
        meta = expect_kind(frame, "health_info").meta
        return cls(
            str_field(meta, "status"),
            str_field(meta, "edge_id"),
            int_field(meta, "sessions"),
            int_field(meta, "version"),
        )
