"""The controller's handle on one inference node: deploy, forward (through an emulated link), ping."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.serving.protocol import DEPLOY, FORWARD, PING, expect
from edgeflower.serving.rpc import call, open_channel
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, encode_frame
from edgeflower.transport.emulation import EmulatedLink, LinkProfile

__all__ = ["NodeClient", "tensor_bytes"]


def tensor_bytes(t: torch.Tensor) -> int:
    """Payload bytes of a tensor on the wire."""
    return t.numel() * t.element_size()


class NodeClient:
    """Calls one inference node.

    After each :meth:`forward`, :attr:`last_up_s` holds the uplink transfer time of the input (what a controller
    observes of the link) and :attr:`last_compute_s` the node's reported compute time.

    Parameters
    ----------
    address : str
        ``host:port`` of the node.
    token : str or callable
        Token presented on every call (role ``controller``), or a function returning the current one (e.g. a
        :class:`~edgeflower.transport.auth.RenewingToken`, so that short-lived tokens are renewed).
    link : LinkProfile, optional
        Emulated link between the controller and the node (applied to every forward and deploy).
    timeout_s : float
        Deadline of forwards and deploys.
    root_cert : bytes, optional
        PEM root certificate when the node serves TLS.
    """

    def __init__(
        self,
        address: str,
        token: str | Callable[[], str],
        link: LinkProfile | None = None,
        timeout_s: float = 10.0,
        root_cert: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address, self.timeout_s = address, timeout_s
        self._token: Callable[[], str] = token if callable(token) else (lambda: token)
        self.link = EmulatedLink(link)
        self.limits = Limits(max_message_bytes=max_message_bytes)
        self._channel = open_channel(address, max_message_bytes, root_cert)
        self.last_up_s = 0.0
        self.last_compute_s = 0.0

    @property
    def token(self) -> str:
        """The token the next call presents."""
        return self._token()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def deploy(
        self,
        version: str,
        spec: ModelSpec,
        start: int,
        stop: int,
        state: Mapping[str, torch.Tensor],
        arch: dict | None = None,
        exit_state: Mapping[str, torch.Tensor] | None = None,
        exit_in_shape: tuple[int, ...] | None = None,
    ) -> float:
        """Deploy blocks ``[start, stop)`` (and an exit head); return the wall time the deploy took."""
        tensors = {**state, **{f"exit.{k}": v for k, v in (exit_state or {}).items()}}
        meta = {
            "token": self.token,
            "version": version,
            "start": start,
            "stop": stop,
            "model": spec.to_dict(),
            "arch": arch,
            "exit_in_shape": list(exit_in_shape) if exit_in_shape is not None else None,
        }
        t0 = time.perf_counter()
        frame = encode_frame("deploy", meta, tensors, self.limits)
        self.link.transmit(len(frame), up=True)
        expect(call(self._channel, DEPLOY, frame, self.timeout_s * 3, self.address, self.limits), "deployed")
        return time.perf_counter() - t0

    def forward(self, version: str, request_id: str, x: torch.Tensor, use_exit: bool = False) -> torch.Tensor:
        """Run the node's segment (then its exit head when ``use_exit``) on ``x``."""
        return self.forward_timed(version, request_id, x, use_exit)[0]

    def forward_timed(
        self, version: str, request_id: str, x: torch.Tensor, use_exit: bool = False
    ) -> tuple[torch.Tensor, float]:
        """:meth:`forward`, also returning the compute seconds the node reported for this call (thread-safe)."""
        meta = {"token": self.token, "version": version, "request_id": request_id, "exit": use_exit}
        frame = encode_frame("forward", meta, {"x": x}, self.limits)
        start, end = self.link.transmit(tensor_bytes(x), up=True)
        self.last_up_s = end - start
        reply = expect(
            call(self._channel, FORWARD, frame, self.timeout_s, self.address, self.limits), "forwarded", ("y",)
        )
        y = reply.tensors["y"]
        compute_s = float(reply.meta.get("compute_s", 0.0))
        self.last_compute_s = compute_s
        self.link.transmit(tensor_bytes(y), up=False)
        return y, compute_s

    def probe(self, nbytes: int, timeout_s: float = 5.0) -> float:
        """Send ``nbytes`` of padding with a heartbeat over the (emulated) link; return the uplink hold time.

        Lets a device that currently sends nothing (everything runs locally) keep observing the bandwidth.
        """
        frame = encode_frame("ping", {"token": self.token}, {"pad": torch.zeros(nbytes, dtype=torch.uint8)})
        start, end = self.link.transmit(nbytes, up=True)
        expect(call(self._channel, PING, frame, timeout_s, self.address, self.limits), "pong")
        return end - start

    def ping(self, timeout_s: float = 1.0) -> dict:
        """Heartbeat: the node's ``pong`` metadata (raises an :class:`EdgeError` when it does not answer)."""
        frame = encode_frame("ping", {"token": self.token})
        return expect(call(self._channel, PING, frame, timeout_s, self.address, self.limits), "pong").meta
