"""The predict client: retries idempotently by request id until it gets exactly one answer.

A request id is chosen by the client (a random one by default). On ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` (the
controller restarting, a network blip) and on ``RESOURCE_EXHAUSTED`` refusals of a busy controller (not a message
over the size limit) the client sends the *same* id again, to the next address when several are given (only on
unavailability), with exponential back-off, until ``deadline_s``. The controller replays a journalled answer instead of
running the request again, so the caller sees one answer per request and the model runs once per request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from edgeflower.serving.protocol import PREDICT, STATUS, check_request_id, expect
from edgeflower.serving.rpc import call, open_channel
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, encode_frame
from edgeflower.transport.errors import EdgeOverloadedError, EdgeUnavailableError

__all__ = ["Prediction", "ServingClient"]


@dataclass(frozen=True)
class Prediction:
    """One answer.

    Attributes
    ----------
    request_id : str
        The request's id.
    logits : torch.Tensor
        ``[batch, classes]``.
    technique : str
        ``initial`` or the failover technique of the route that answered.
    replayed : bool
        The answer came from the journal (the request had been answered before, e.g. before a restart).
    recovered : bool
        The request had been accepted before a controller restart and was run again after it.
    attempts : int
        Calls it took.
    """

    request_id: str
    logits: torch.Tensor
    technique: str
    replayed: bool
    recovered: bool
    attempts: int


class ServingClient:
    """Client of the controller's predict service.

    Parameters
    ----------
    addresses : str or sequence of str
        Controller address(es), tried in turn on failure.
    token : str or callable
        Client token (role ``client``, issued with the shared secret), or a function returning the current one
        (e.g. a :class:`~edgeflower.transport.auth.RenewingToken`: tokens live minutes).
    deadline_s : float
        Give up retrying after this long.
    timeout_s : float
        Deadline of one call.
    root_cert : bytes, optional
        PEM root certificate when the controller serves TLS.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        token: str | Callable[[], str],
        deadline_s: float = 60.0,
        timeout_s: float = 30.0,
        root_cert: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        self._token: Callable[[], str] = token if callable(token) else (lambda: token)
        self.deadline_s, self.timeout_s = deadline_s, timeout_s
        self.limits = Limits(max_message_bytes=max_message_bytes)
        self._channels = [open_channel(a, max_message_bytes, root_cert) for a in self.addresses]
        self._current = 0

    @property
    def token(self) -> str:
        """The token the next request presents."""
        return self._token()

    def close(self) -> None:
        """Close the channels."""
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, x: torch.Tensor, request_id: str | None = None) -> Prediction:
        """Classify the batch ``x``; retry with the same id until answered or ``deadline_s`` passes.

        Raises
        ------
        EdgeUnavailableError, EdgeOverloadedError
            If no controller answered within the deadline.
        EdgeError
            Any other rejection (bad token, malformed input), at once.
        """
        rid = check_request_id(request_id or secrets.token_hex(12))
        frame = encode_frame("predict", {"token": self._token(), "request_id": rid}, {"x": x}, self.limits)
        deadline = time.monotonic() + self.deadline_s
        backoff, attempts = 0.05, 0
        while True:
            i = self._current
            attempts += 1
            try:
                reply = call(self._channels[i], PREDICT, frame, self.timeout_s, self.addresses[i], self.limits)
            except (EdgeUnavailableError, EdgeOverloadedError) as exc:
                if time.monotonic() + backoff > deadline:
                    raise
                if isinstance(exc, EdgeUnavailableError):
                    self._current = (i + 1) % len(self._channels)
                time.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))  # jittered: no retry storms
                backoff = min(backoff * 2, 1.0)
                continue
            expect(reply, "prediction", ("logits",))
            m = reply.meta
            return Prediction(
                rid,
                reply.tensors["logits"],
                str(m.get("technique")),
                bool(m.get("replayed")),
                bool(m.get("recovered")),
                attempts,
            )

    def status(self) -> dict:
        """The controller's status (route, live nodes, pending requests, failover events)."""
        frame = encode_frame("status", {"token": self._token()})
        i = self._current
        return expect(
            call(self._channels[i], STATUS, frame, self.timeout_s, self.addresses[i], self.limits), "status_info"
        ).meta
