"""The offload channel works over TLS with a self-signed certificate, and refuses clients that do not trust it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeflower.edge import EdgeServer
from edgeflower.transport import EdgeClient, EdgeUnavailableError, TLSConfig
from tests._edge_helpers import (
    SECRET,
    fashion_batches,
    fresh_model,
    max_abs_diff,
    self_signed_cert,
    train_reference,
    train_split,
)


@pytest.fixture(scope="module")
def cert() -> tuple[bytes, bytes]:
    return self_signed_cert()


@pytest.fixture(scope="module")
def tls_server(cert: tuple[bytes, bytes]) -> Iterator[EdgeServer]:
    with EdgeServer("127.0.0.1", 0, secret=SECRET, tls=TLSConfig(*cert)) as server:
        yield server


def test_split_training_over_tls_matches_local_training(tls_server: EdgeServer, cert: tuple[bytes, bytes]) -> None:
    batches = fashion_batches(num_batches=2, batch_size=8)
    reference = train_reference(fresh_model("vgg5"), batches)
    with EdgeClient(tls_server.address, tls_root_cert=cert[0]) as client:
        assert client.health().status == "serving"
        split, metrics = train_split(client, fresh_model("vgg5"), 3, batches)
    assert max_abs_diff(split, reference) <= 1e-5
    assert metrics.batches == 2


def test_tls_server_name_override_for_localhost(tls_server: EdgeServer, cert: tuple[bytes, bytes]) -> None:
    with EdgeClient(tls_server.address, tls_root_cert=cert[0], server_name="localhost") as client:
        assert client.health().sessions == 0


def test_client_not_trusting_the_certificate_is_refused(tls_server: EdgeServer) -> None:
    other_cert, _ = self_signed_cert("someone-else")
    with EdgeClient(tls_server.address, tls_root_cert=other_cert, timeout_s=5) as client:
        with pytest.raises(EdgeUnavailableError):
            client.health()


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: EdgeServer) -> None:
    with EdgeClient(tls_server.address, timeout_s=5) as client:
        with pytest.raises(EdgeUnavailableError):
            client.health()


def test_tls_config_reads_pem_files_and_hides_the_key(tmp_path, cert: tuple[bytes, bytes]) -> None:
    (tmp_path / "c.pem").write_bytes(cert[0])
    (tmp_path / "k.pem").write_bytes(cert[1])
    tls = TLSConfig.from_files(tmp_path / "c.pem", tmp_path / "k.pem")
    assert tls == TLSConfig(*cert)
    assert "PRIVATE" not in repr(tls)


def test_app_nodes_connect_over_tls_with_edge_root_cert(tls_server: EdgeServer, cert, tmp_path) -> None:
    from edgeflower.app.client_app import edge_connector
    from edgeflower.config import AppConfig, ConfigError

    pem = tmp_path / "ca.pem"
    pem.write_bytes(cert[0])
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    external = {"mode": "split", "edge-addresses": tls_server.address, "edge-secret-file": str(secret)}
    cfg = AppConfig.from_run_config({**external, "edge-root-cert": str(pem)})
    with edge_connector(cfg, {})(tls_server.address) as client:  # the run config's certificate
        assert client.health().status == "serving"
    plain = AppConfig.from_run_config(external)
    with edge_connector(plain, {"edge-root-cert": str(pem)})(tls_server.address) as client:  # a node's own
        assert client.health().status == "serving"
    with edge_connector(cfg, {"edge-root-cert": ""})(tls_server.address) as client:  # a node opting out
        with pytest.raises(EdgeUnavailableError):
            client.health()
    with pytest.raises(ConfigError, match=r"'edge-root-cert'.*does not exist on this node"):
        edge_connector(cfg, {"edge-root-cert": str(tmp_path / "missing.pem")})
    in_process = AppConfig.from_run_config({"mode": "split"})  # loopback edge servers are plaintext
    assert edge_connector(in_process, {"edge-root-cert": str(tmp_path / "missing.pem")}) is not None
