"""``edgeflower edge-server`` as a separate process: serves split sessions, stops on SIGTERM, and when killed
mid-stream the device gets a clear ``EdgeUnavailableError`` quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeflower.transport import EdgeClient, EdgeUnavailableError
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
