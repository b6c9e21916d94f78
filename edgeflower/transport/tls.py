"""Optional TLS for the offload channel (PEM certificate and key, server-authenticated)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TLSConfig", "client_credentials"]


@dataclass(frozen=True)
class TLSConfig:
    """An edge server's certificate chain and private key (PEM bytes).

    Attributes
    ----------
    cert_chain : bytes
        PEM certificate chain presented to clients.
    private_key : bytes
        PEM private key of the certificate.
    """

    cert_chain: bytes
    private_key: bytes

    def __repr__(self) -> str:  # never print the key
        return f"TLSConfig(cert_chain=<{len(self.cert_chain)} bytes>, private_key=<hidden>)"

    @classmethod
    def from_files(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> TLSConfig:
        """Read the certificate chain and key from PEM files."""
        return cls(Path(cert_path).read_bytes(), Path(key_path).read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials (no client certificates required)."""
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)])


def client_credentials(root_cert: bytes | None) -> grpc.ChannelCredentials:
    """gRPC channel credentials trusting ``root_cert`` (PEM), or the system roots when ``None``."""
    return grpc.ssl_channel_credentials(root_certificates=root_cert)
