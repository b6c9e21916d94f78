"""``edgeflower edge-server`` as a separate process: serves split sessions, stops on SIGTERM, and when killed
mid-stream the device gets a clear ``EdgeUnavailableError`` quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeflower.cli import build_parser
from edgeflower.commands.edge_server import config_from_args, parse_peers
from edgeflower.edge.server import EdgeServer
from edgeflower.transport import EdgeAuthError, EdgeClient, EdgeUnavailableError
from tests._edge_helpers import (
    OPTIM,
    SECRET,
    EdgeProcess,
    fashion_batches,
    fresh_model,
    max_abs_diff,
    token,
    train_reference,
    train_split,
)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "edge.secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


def test_edge_server_process_serves_a_split_session_and_stops_on_sigterm(secret_file: Path) -> None:
    batches = fashion_batches(num_batches=2, batch_size=8)
    reference = train_reference(fresh_model("vgg5"), batches)
    with EdgeProcess(secret_file, "--edge-id", "edge-p") as edge:
        with EdgeClient(edge.address, timeout_s=30) as client:
            assert client.health().edge_id == "edge-p"
            split, metrics = train_split(client, fresh_model("vgg5"), 2, batches)
            assert client.health().sessions == 0
        assert edge.terminate() == 0
    assert max_abs_diff(split, reference) <= 1e-5
    assert metrics.batches == 2


def test_killing_the_edge_server_mid_stream_raises_edge_unavailable_quickly(secret_file: Path) -> None:
    x, y = fashion_batches(num_batches=1, batch_size=8)[0]
    model = fresh_model("vgg5")
    head, tail = model.split(2)
    with EdgeProcess(secret_file) as edge, EdgeClient(edge.address, timeout_s=30) as client:
        session = client.open_session(token(), model.spec, 2, tail.state_dict(), OPTIM)
        session.step(head(x).detach(), y, batch=0)
        edge.kill()
        start = time.monotonic()
        with pytest.raises(EdgeUnavailableError):
            session.step(head(x).detach(), y, batch=1)
        assert time.monotonic() - start < 10.0  # one-sided and generous: far below the 30 s deadline it replaces
        with pytest.raises(EdgeUnavailableError):  # the session stays failed
            session.step(head(x).detach(), y, batch=2)
        session.abort()


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    from edgeflower.cli import main

    assert main(["edge-server", "--secret-file", str(tmp_path / "nope")]) == 1
    short = tmp_path / "short"
    short.write_text("abc")
    assert main(["edge-server", "--secret-file", str(short)]) == 1


def test_edge_server_options_set_its_limits_and_bad_values_are_refused_before_it_starts() -> None:
    def config(*extra: str):  # type: ignore[no-untyped-def]
        return config_from_args(build_parser().parse_args(["edge-server", "--secret-file", "s", *extra]))

    cfg = config("--workers", "4", "--max-waiting-mb", "8", "--max-sessions-per-node", "3", "--peer", "edge-q=h:1")
    assert (cfg.workers, cfg.max_waiting_bytes, cfg.max_sessions_per_node) == (4, 8 * 2**20, 3)
    assert cfg.peers == {"edge-q": "h:1"}
    default = config()
    assert (default.workers, default.max_waiting_bytes, default.peers) == (16, 256 * 2**20, None)
    for bad, message in [
        (("--workers", "0"), "--workers"),
        (("--max-waiting-mb", "-1"), "--max-waiting-mb"),
        (("--idle-timeout", "0"), "--idle-timeout"),
        (("--max-model-params", "0"), "--max-model-params"),
        (("--max-waiting-mb", "inf"), "--max-waiting-mb"),
        (("--peer", "edge-q"), "EDGE_ID=HOST:PORT"),
        (("--peer", "edge-q=::1:5"), "IPv6 host in brackets"),
        (("--peer", "edge-q=h:70000"), "not in 1-65535"),
    ]:
        with pytest.raises(ValueError, match=message):
            config(*bad)


def test_an_edge_server_process_with_peers_migrates_to_the_named_peer_and_refuses_others(secret_file: Path) -> None:
    """``--peer edge-q=ADDRESS``: a session moves to edge-q at that address whatever address the device names, and
    a migration token for an edge server that is no peer is refused."""
    x, y = fashion_batches(num_batches=1, batch_size=8)[0]
    model = fresh_model("vgg5")
    head, tail = model.split(2)
    with EdgeServer(secret=SECRET, edge_id="edge-q") as peer_server:
        with (
            EdgeProcess(secret_file, "--edge-id", "edge-p", "--peer", f"edge-q={peer_server.address}") as edge,
            EdgeClient(edge.address, timeout_s=30) as client,
        ):
            sessions = []
            for node in (1, 2):
                session = client.open_session(token(node, edge_id="edge-p"), model.spec, 2, tail.state_dict(), OPTIM)
                session.step(head(x).detach(), y, batch=0)
                session.detach()
                sessions.append(session)
            with pytest.raises(EdgeAuthError, match="'edge-r': not a peer"):
                client.migrate(sessions[1], peer_server.address, token(2, edge_id="edge-r", role="migration"))
            moving = token(1, edge_id="edge-q", role="migration")
            client.migrate(sessions[0], "127.0.0.1:1", moving)  # a dead port: the process dials edge-q
            with EdgeClient(peer_server.address) as peer:
                peer.resume(moving, 2).close()
            sessions[1].abort()
            assert client.health().sessions == 0


@pytest.mark.parametrize("value", ["edge-q", "=127.0.0.1:5", "edge-q=127.0.0.1", "edge-q=:5", "edge-q=host:port"])
def test_a_malformed_peer_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="EDGE_ID=HOST:PORT"):
        parse_peers([value])


def test_peers_are_read_by_edge_id_once_each() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_peers(["edge-q=127.0.0.1:5", "edge-q=127.0.0.1:6"])
    assert parse_peers(["edge-q=[::1]:5", "edge-r=edge-r.local:50051"]) == {
        "edge-q": "[::1]:5",
        "edge-r": "edge-r.local:50051",
    }
