"""Addresses and client channels: how an edgeflower client dials a service, and when plaintext is allowed.

A non-loopback address needs TLS: a server refuses to serve plaintext there unless told ``insecure``
(:func:`check_plaintext`), and a client's plaintext channel to one logs a WARNING (:func:`open_channel`).
"""

from __future__ import annotations

import ipaddress
import threading
from logging import WARNING

import grpc
from flwr.common.logger import log

from edgeflower.transport.service import channel_options
from edgeflower.transport.tls import client_credentials

__all__ = ["check_plaintext", "format_address", "is_loopback", "open_channel"]


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{bracketed}:{port}"


def _host_of(address: str) -> str:
    address = address.split("///", 1)[-1]
    if address.startswith("["):
        return address[1 : address.find("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def is_loopback(host_or_address: str) -> bool:
    """Whether a host (or ``host:port``) is this machine's loopback interface (``localhost``, 127/8, ``::1``)."""
    host = _host_of(host_or_address).strip()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(host: str, tls: object, insecure: bool, who: str, in_clear: str) -> None:
    """Refuse plaintext on a non-loopback address unless ``insecure``; then warn what travels in clear.

    Raises
    ------
    ValueError
        For a non-loopback ``host`` without TLS and without ``insecure``.
    """
    if tls is not None or is_loopback(host):
        return
    if not insecure:
        raise ValueError(
            f"{who} refuses to serve plaintext on the non-loopback address {host!r}: {in_clear} would travel in "
            "clear. Give it a TLS certificate and key, or set the explicit insecure option (--insecure)"
        )
    log(WARNING, "%s serves INSECURE plaintext on %s: %s travel in clear", who, host, in_clear)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def open_channel(
    address: str, max_message_bytes: int, root_cert: bytes | None = None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to ``address`` with the same message limits as the servers; TLS when ``root_cert`` is given.

    ``server_name`` overrides the name the server's certificate is checked against (TLS only). A plaintext channel
    to a non-loopback address logs a WARNING (once per address): tokens and tensors travel in clear.
    """
    options: list[tuple[str, int | str]] = list(channel_options(max_message_bytes))
    if root_cert is None:
        if not is_loopback(address):
            with _warned_lock:
                first = address not in _warned
                _warned.add(address)
            if first:
                log(WARNING, "plaintext channel to %s: tokens, weights and tensors travel in clear", address)
        return grpc.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, client_credentials(root_cert), options=options)
