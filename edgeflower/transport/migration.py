"""Messages of session migration between edge servers (FedFly) on the offload channel.

===========  =====================  ===================  =====================================================
method       from -> to             request / response   what happens
===========  =====================  ===================  =====================================================
``Migrate``  device -> source edge  ``migrate`` /        the source exports the (detached) session, sends it to
                                    ``migrated``         the destination with ``Import``, frees it on the ack
                                                         and relays the destination's description of it
``Import``   source -> destination  ``import`` /         the destination checks token, seal and fit, and
                                    ``imported``         creates the session under the migration token
``Resume``   device -> destination  ``resume`` /         the device finds its migrated session when the source
                                    ``resumed``          relayed nothing (it died right after the ack)
===========  =====================  ===================  =====================================================

The migration token is an ordinary session token that the ServerApp issued for the *destination* edge server and
the same (run, node, round); it authorises exactly one import and then owns the migrated session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.codec import Frame, Limits, encode_frame
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import expect_kind

__all__ = [
    "ImportReply",
    "ImportRequest",
    "MigrateReply",
    "MigrateRequest",
    "ResumeReply",
    "ResumeRequest",
]


def _field(meta: dict, key: str, typ: type, optional: bool = False) -> object:  # type: ignore[type-arg]
    value = meta.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise InvalidMessageError(f"field {key!r} must be a {typ.__name__}")
    if isinstance(value, str) and not 0 < len(value) <= 8192:
        raise InvalidMessageError(f"field {key!r} has a bad length")
    return value


def _spec(meta: dict) -> ModelSpec | None:  # type: ignore[type-arg]
    raw = meta.get("expect_model")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidMessageError("field 'expect_model' must be a model spec object")
    try:
        return ModelSpec.from_dict(raw)
    except ValueError as exc:
        raise InvalidMessageError(str(exc)) from exc


@dataclass(frozen=True)
class MigrateRequest:
    """Ask the source edge server to move a session to ``destination``.

    Attributes
    ----------
    session_id, token : str
        The session and the token that owns it.
    destination : str
        ``host:port`` of the destination edge server, as the device knows it. A source with peers
        (:attr:`~edgeflower.edge.config.EdgeServerConfig.peers`) dials the peer the migration token names at the
        address it knows instead; the reply's ``edge_id`` says where the session went.
    migration_token : str
        Token the ServerApp issued for the destination (same run, node and round).
    expect_model : ModelSpec, optional
        The model the device trains (the destination refuses a state for another one).
    expect_split_point : int, optional
        The device's split point (likewise).
    """

    session_id: str
    token: str
    destination: str
    migration_token: str
    expect_model: ModelSpec | None = None
    expect_split_point: int | None = None

    def to_bytes(self) -> bytes:
        """Encode as a ``migrate`` frame."""
        meta = {
            "session_id": self.session_id,
            "token": self.token,
            "destination": self.destination,
            "migration_token": self.migration_token,
            "expect_model": None if self.expect_model is None else self.expect_model.to_dict(),
            "expect_split_point": self.expect_split_point,
        }
        return encode_frame("migrate", meta)

    @classmethod
    def from_frame(cls, frame: Frame) -> MigrateRequest:
        """Parse and validate."""
        meta = expect_kind(frame, "migrate").meta
        return cls(
            str(_field(meta, "session_id", str)),
            str(_field(meta, "token", str)),
            str(_field(meta, "destination", str)),
            str(_field(meta, "migration_token", str)),
            _spec(meta),
            _field(meta, "expect_split_point", int, optional=True),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class MigrateReply:
    """The source's answer: where the session lives now and what moving it cost.

    ``resume`` relays the destination's description of the session (what ``Resume`` would answer), so the device
    continues on the destination without asking it; ``None`` from a source that does not relay it.
    """

    session_id: str
    edge_id: str
    state_bytes: int
    export_s: float
    transfer_s: float
    resume: ResumeReply | None = None

    def to_bytes(self) -> bytes:
        """Encode as a ``migrated`` frame."""
        meta = {k: v for k, v in self.__dict__.items() if k != "resume"}
        meta["resume"] = None if self.resume is None else self.resume.to_meta()
        return encode_frame("migrated", meta)

    @classmethod
    def from_frame(cls, frame: Frame) -> MigrateReply:
        """Parse and validate."""
        meta = expect_kind(frame, "migrated").meta
        try:
            return cls(
                str(meta["session_id"]),
                str(meta["edge_id"]),
                int(meta["state_bytes"]),
                float(meta["export_s"]),
                float(meta["transfer_s"]),
                ResumeReply.from_meta(meta["resume"]) if meta.get("resume") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidMessageError(f"malformed 'migrated' reply: {exc}") from exc


@dataclass(frozen=True)
class ImportRequest:
    """The source hands an exported, sealed session to the destination."""

    migration_token: str
    mac: str
    state: bytes
    expect_model: ModelSpec | None = None
    expect_split_point: int | None = None

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as an ``import`` frame (the state travels as a uint8 tensor)."""
        meta = {
            "migration_token": self.migration_token,
            "mac": self.mac,
            "expect_model": None if self.expect_model is None else self.expect_model.to_dict(),
            "expect_split_point": self.expect_split_point,
        }
        state = torch.frombuffer(bytearray(self.state), dtype=torch.uint8)
        return encode_frame("import", meta, {"state": state}, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> ImportRequest:
        """Parse and validate."""
        meta = expect_kind(frame, "import").meta
        state = frame.tensors.get("state")
        if state is None or state.dtype != torch.uint8 or state.dim() != 1:
            raise InvalidMessageError("an 'import' message needs a 1-d uint8 tensor 'state'")
        return cls(
            str(_field(meta, "migration_token", str)),
            str(_field(meta, "mac", str)),
            state.numpy().tobytes(),
            _spec(meta),
            _field(meta, "expect_split_point", int, optional=True),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ImportReply:
    """The destination's acknowledgement: the migrated session's new id, the seconds the destination worked on the
    state (``import_s``: unseal, decode, rebuild; the source charges them after an emulated link's arrival) and the
    session's description for the device (``resume``, relayed in :class:`MigrateReply`)."""

    session_id: str
    edge_id: str
    import_s: float = 0.0
    resume: ResumeReply | None = None

    def to_bytes(self) -> bytes:
        """Encode as an ``imported`` frame."""
        meta = {
            "session_id": self.session_id,
            "edge_id": self.edge_id,
            "import_s": self.import_s,
            "resume": None if self.resume is None else self.resume.to_meta(),
        }
        return encode_frame("imported", meta)

    @classmethod
    def from_frame(cls, frame: Frame) -> ImportReply:
        """Parse and validate."""
        meta = expect_kind(frame, "imported").meta
        seconds = meta.get("import_s", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise InvalidMessageError("field 'import_s' must be a finite number of seconds >= 0")
        resume = meta.get("resume")
        return cls(
            str(_field(meta, "session_id", str)),
            str(meta.get("edge_id", "")),
            float(seconds),
            None if resume is None else ResumeReply.from_meta(resume),
        )


@dataclass(frozen=True)
class ResumeRequest:
    """The device asks the destination for the session its migration token owns."""

    migration_token: str

    def to_bytes(self) -> bytes:
        """Encode as a ``resume`` frame."""
        return encode_frame("resume", {"migration_token": self.migration_token})

    @classmethod
    def from_frame(cls, frame: Frame) -> ResumeRequest:
        """Parse and validate."""
        return cls(str(_field(expect_kind(frame, "resume").meta, "migration_token", str)))


@dataclass(frozen=True)
class ResumeReply:
    """Where to continue: the session, the shape it expects, and the last batch it completed."""

    session_id: str
    edge_id: str
    input_shape: tuple[int, ...]
    expects_grad: bool
    last_batch: int

    def to_meta(self) -> dict[str, object]:
        """The reply's fields as JSON values (also relayed inside ``imported`` and ``migrated`` frames)."""
        return {
            "session_id": self.session_id,
            "edge_id": self.edge_id,
            "input_shape": list(self.input_shape),
            "expects_grad": self.expects_grad,
            "last_batch": self.last_batch,
        }

    def to_bytes(self) -> bytes:
        """Encode as a ``resumed`` frame."""
        return encode_frame("resumed", self.to_meta())

    @classmethod
    def from_frame(cls, frame: Frame) -> ResumeReply:
        """Parse and validate."""
        return cls.from_meta(expect_kind(frame, "resumed").meta)

    @classmethod
    def from_meta(cls, meta: object) -> ResumeReply:
        """Parse and validate the fields :meth:`to_meta` wrote."""
        if not isinstance(meta, dict):
            raise InvalidMessageError("malformed 'resumed' reply: expected an object")
        try:
            return cls(
                str(meta["session_id"]),
                str(meta["edge_id"]),
                tuple(int(v) for v in meta["input_shape"]),
                bool(meta["expects_grad"]),
                int(meta["last_batch"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidMessageError(f"malformed 'resumed' reply: {exc}") from exc
