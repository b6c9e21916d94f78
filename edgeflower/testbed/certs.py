"""Credentials of one testbed: a token secret and a self-signed TLS certificate for its edge-server addresses."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

__all__ = ["self_signed", "write_credentials"]


def self_signed(
    addresses: Sequence[str], common_name: str = "edgeflower testbed edge servers", dns_names: Sequence[str] = ()
) -> tuple[bytes, bytes]:
    """A one-day self-signed certificate (its own CA) valid for ``addresses`` (IPs) and ``dns_names``, and its key
    (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_credentials(directory: Path, edge_addresses: Sequence[str]) -> dict[str, Path]:
    """Write ``secret`` (64 random hex digits), ``edge-cert.pem`` and ``edge-key.pem`` (mode 0600) into ``directory``.

    Returns
    -------
    dict
        ``secret``, ``cert`` and ``key`` paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(edge_addresses)
    paths = {"secret": directory / "secret", "cert": directory / "edge-cert.pem", "key": directory / "edge-key.pem"}
    for what, data in (("secret", secrets.token_hex(32).encode()), ("cert", cert), ("key", key)):
        fd = os.open(paths[what], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return paths
