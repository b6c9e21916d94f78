"""Client migration between edge servers (FedFly): a moved round ends exactly like an unmoved one."""

from __future__ import annotations

import copy
import signal

import pytest
import torch

from edgeflower.data import BatchLoader
from edgeflower.device.mobility import MoveOrder
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.sessions import EdgeSessions
from edgeflower.edge.migration import export_session, seal
from edgeflower.edge.pool import EdgePool
from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.models import build_model
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport import (
    EdgeAuthError,
    EdgeClient,
    EdgeError,
    EdgeUnavailableError,
    InvalidMessageError,
    OptimizerSettings,
    TLSConfig,
    TokenIssuer,
)
from edgeflower.transport.migration import ImportRequest, MigrateRequest
from edgeflower.transport.service import METHOD_IMPORT, METHOD_MIGRATE
from tests._edge_helpers import EdgeProcess, count_exports, self_signed_cert, wait_until

SECRET = b"migration-test-shared-secret-0123456789"
OPT = OptimizerSettings(lr=0.05, momentum=0.9, weight_decay=1e-4)
ISSUER = TokenIssuer(SECRET)


@pytest.fixture(scope="module")
def edges():
    with EdgeServer(secret=SECRET, edge_id="edge-a") as a, EdgeServer(secret=SECRET, edge_id="edge-b") as b:
        yield a, b


@pytest.fixture(scope="module")
def batches(fmnist_train):
    return list(BatchLoader(fmnist_train.subset(range(192)), 32, seed=11).batches(0))


def _max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def _run(model, batches, source: str, edge_id: str, order: MoveOrder | None, m: int = 1, node: int = 5, root_cert=None):
    token = ISSUER.issue(run_id=3, node_id=node, server_round=1, edge_id=edge_id)
    with EdgeClient(source, root_cert) as client:
        trainer = PipelineTrainer(
            model, 3, OPT, m, open_session=EdgeSessions(client, token, model.spec), move_order=order
        )
        return trainer.train(batches)


def _order(dest, at_batch: int, mode: str = "migrate", node: int = 5) -> MoveOrder:
    return MoveOrder(
        at_batch,
        dest.address,
        ISSUER.issue(run_id=3, node_id=node, server_round=1, edge_id=dest.edge_id, role="migration"),
        mode,
    )


@pytest.mark.parametrize(("norm", "m"), [("batch", 1), ("group", 4)], ids=["split", "pipeline"])
def test_migrated_round_ends_with_the_same_weights_as_an_unmoved_round(edges, batches, norm, m, monkeypatch):
    a, b = edges
    ahead, in_migrate = count_exports(monkeypatch)
    torch.manual_seed(0)
    initial = build_model("vgg5", norm=norm)
    unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
    _run(unmoved, batches, a.address, "edge-a", None, m)
    order = _order(b, at_batch=3)
    result = _run(moved, batches, a.address, "edge-a", order, m)
    assert not result.fell_back
    assert _max_diff(unmoved, moved) <= 1e-6
    assert _max_diff(initial, moved) > 1e-3
    assert order.report["migration-bytes"] > 0 and order.report["migration-resumed"] == 0
    assert (ahead, in_migrate) == ([2], [])  # exported as the stream ended ahead of the move
    assert a.num_sessions == 0 and b.num_sessions == 0  # source freed after the ack, destination closed


def test_migration_between_tls_edge_servers_trusts_only_the_configured_peer_root(batches):
    cert, key = self_signed_cert()
    tls = TLSConfig(cert, key)
    trusting = EdgeServerConfig(peer_root_cert=cert)
    with (
        EdgeServer(secret=SECRET, tls=tls, edge_id="tls-a", config=trusting) as a,
        EdgeServer(secret=SECRET, tls=tls, edge_id="tls-b") as b,
        EdgeServer(secret=SECRET, tls=tls, edge_id="tls-c") as c,  # does not trust its peers' certificate
    ):
        torch.manual_seed(0)
        initial = build_model("vgg5")
        unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
        _run(unmoved, batches, a.address, "tls-a", None, root_cert=cert)
        order = _order(b, at_batch=3)
        order.connect = lambda address: EdgeClient(address, cert)
        result = _run(moved, batches, a.address, "tls-a", order, root_cert=cert)
        assert not result.fell_back and order.report["migration-bytes"] > 0
        assert _max_diff(unmoved, moved) <= 1e-6
        # an edge server without the peer's root refuses to hand the session over; the device keeps its progress
        token = ISSUER.issue(run_id=3, node_id=6, server_round=1, edge_id="tls-c")
        with EdgeClient(c.address, cert) as client:
            session = client.open_session(token, initial.spec, 3, initial.split(3)[1].state_dict(), OPT)
            with pytest.raises(EdgeError):
                client.migrate(
                    session,
                    a.address,
                    ISSUER.issue(run_id=3, node_id=6, server_round=1, edge_id="tls-a", role="migration"),
                )
            assert c.num_sessions == 1  # nothing lost on the source


def test_restart_baseline_discards_progress_but_ends_with_the_same_weights(edges, batches):
    a, b = edges
    torch.manual_seed(0)
    initial = build_model("vgg5")
    unmoved, restarted = copy.deepcopy(initial), copy.deepcopy(initial)
    _run(unmoved, batches, a.address, "edge-a", None)
    order = _order(b, at_batch=4, mode="restart")
    result = _run(restarted, batches, a.address, "edge-a", order)
    assert not result.fell_back and result.num_examples == 192
    assert _max_diff(unmoved, restarted) <= 1e-6
    assert order.report["restart-s"] > 0 and order.report["restart-batches"] == 4  # the wasted first attempt
    assert "migration-s" not in order.report  # a restart is not a migration
    assert wait_until(lambda: a.num_sessions == 0) and b.num_sessions == 0  # dropped once the source sees the cancel


def test_source_killed_right_after_the_destination_acknowledged_loses_nothing(tmp_path, edges, batches):
    _, b = edges
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    torch.manual_seed(0)
    initial = build_model("vgg5")
    unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
    _run(unmoved, batches, b.address, "edge-b", None)
    with EdgeProcess(secret_file, "--edge-id", "edge-src", crash_after_migration_ack=True) as source:
        order = _order(b, at_batch=2, node=6)
        result = _run(moved, batches, source.address, "edge-src", order, node=6)
        assert source.proc.wait(10) == 137  # the source really died after the ack
    assert not result.fell_back
    assert order.report["migration-resumed"] == 1  # found its session on the destination
    assert _max_diff(unmoved, moved) <= 1e-6


def test_source_killed_before_the_migration_fails_cleanly_and_falls_back_keeping_progress(tmp_path, edges, batches):
    _, b = edges
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    torch.manual_seed(0)
    initial = build_model("vgg5")
    at = 2
    # batches [0, at) split (== local); then the device replays the dead source's tail updates and trains
    # locally: the same as local training of the whole model
    reference = copy.deepcopy(initial)
    train_local(reference, batches, make_optimizer(reference.parameters(), OPT.lr, OPT.momentum, OPT.weight_decay))
    moved = copy.deepcopy(initial)
    with EdgeProcess(secret_file, "--edge-id", "edge-src") as source:

        def stream():
            for i, batch in enumerate(batches):
                if i == at:
                    source.proc.send_signal(signal.SIGKILL)
                    source.proc.wait(10)
                yield batch

        order = _order(b, at_batch=at, node=7)
        result = _run(moved, stream(), source.address, "edge-src", order, node=7)
    assert result.fell_back and result.fallback_batch == at and result.replayed_batches == at
    assert _max_diff(moved, reference) <= 1e-5
    assert b.num_sessions == 0


def _open_and_detach(client: EdgeClient, model, token: str, x, y):
    head, tail = model.split(3)
    session = client.open_session(token, model.spec, 3, tail.state_dict(), OPT)
    session.step(head(x).detach(), y, batch=0, batch_size=len(y))
    session.detach()
    return session


def test_migrate_waits_briefly_for_the_streams_end_and_refuses_a_session_still_training(edges, batches, monkeypatch):
    import edgeflower.edge.migration as migration

    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5")
    head, tail = model.split(3)
    (x, y), (x2, y2) = batches[0], batches[1]
    with EdgeClient(a.address) as client:
        session = client.open_session(ISSUER.issue(3, 12, 1, "edge-a"), model.spec, 3, tail.state_dict(), OPT)
        session.step(head(x).detach(), y, batch=0, batch_size=len(y))  # its stream stays attached
        monkeypatch.setattr(migration, "DETACH_WAIT_S", 0.05)
        request = MigrateRequest(
            session.session_id, session.token, b.address, ISSUER.issue(3, 12, 1, "edge-b", role="migration"), None, 3
        )
        with pytest.raises(EdgeError, match="still has a training stream: detach first"):
            client.call(METHOD_MIGRATE, request.to_bytes(), 10)
        session.step(head(x2).detach(), y2, batch=1, batch_size=len(y2))  # nothing lost: it trains on
        monkeypatch.undo()
        good = ISSUER.issue(3, 12, 1, "edge-b", role="migration")
        reply = client.migrate(session, b.address, good)
        assert reply.resume is not None and reply.resume.last_batch == 1  # the end frame and Migrate went together
        assert session.session_id not in a.registry.ids()
        with EdgeClient(b.address) as peer:
            peer.resumed(reply.resume, good, 3).close()


def test_a_stream_ended_ahead_of_a_move_detaches_the_session_which_still_trains_closes_and_migrates(edges, batches):
    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5")
    head, tail = model.split(3)
    (x, y), (x2, y2) = batches[0], batches[1]
    with EdgeClient(a.address) as client:
        session = client.open_session(ISSUER.issue(3, 14, 1, "edge-a"), model.spec, 3, tail.state_dict(), OPT)
        session.send(head(x).detach(), y, batch=0, batch_size=len(y))
        with pytest.raises(EdgeError, match="results pending"):
            session.end_stream()  # a step in flight: the stream stays
        session.recv()
        session.end_stream()  # returns at once; the source ends the stream meanwhile
        assert a.registry.get(session.session_id).wait_detached(10)  # detached before any Migrate
        session.step(head(x2).detach(), y2, batch=1, batch_size=len(y2))  # a new stream: nothing lost
        session.end_stream()
        good = ISSUER.issue(3, 14, 1, "edge-b", role="migration")
        reply = client.migrate(session, b.address, good)  # no second end frame; the move finds it detached
        assert reply.resume is not None and reply.resume.last_batch == 1
        with EdgeClient(b.address) as peer:
            moved = peer.resumed(reply.resume, good, 3)
            moved.end_stream()  # no stream yet: nothing to end
            state, metrics = moved.close()
    assert metrics.batches == 2 and set(state) == set(tail.state_dict())
    assert a.num_sessions == 0 and b.num_sessions == 0


def test_a_round_that_ends_before_its_scheduled_move_closes_its_session_and_the_early_channel(edges, batches):
    a, b = edges
    torch.manual_seed(0)
    initial = build_model("vgg5")
    unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
    _run(unmoved, batches, a.address, "edge-a", None)
    order = _order(b, at_batch=len(batches), node=15)  # after the last batch: the stream ends, no move follows
    result = _run(moved, batches, a.address, "edge-a", order, node=15)
    assert not result.fell_back and "migration-s" not in order.report
    assert _max_diff(unmoved, moved) <= 1e-6
    assert order._ready is None  # the channel connected ahead was closed with the pass
    assert a.num_sessions == 0 and b.num_sessions == 0


def test_forged_replayed_and_tampered_migrations_are_rejected(edges, batches):
    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5")
    x, y = batches[0]
    with EdgeClient(a.address) as client:
        session = _open_and_detach(client, model, ISSUER.issue(3, 8, 1, "edge-a"), x, y)
        forged = TokenIssuer(b"another-secret-that-nobody-shares-000").issue(3, 8, 1, "edge-b")
        with pytest.raises(EdgeAuthError, match="signature"):
            client.migrate(session, b.address, forged)
        assert session.session_id in a.registry.ids()  # the source keeps the session when the move fails
        wrong_owner = ISSUER.issue(3, 9, 1, "edge-b", role="migration")  # a migration token for another node
        with pytest.raises(EdgeAuthError, match="belongs to"):
            client.migrate(session, b.address, wrong_owner)
        good = ISSUER.issue(3, 8, 1, "edge-b", role="migration")
        with a.registry.get(session.session_id).lock:
            state = export_session(a.registry.get(session.session_id))
        tampered = bytearray(state)
        tampered[-5] ^= 0xFF  # a weight changed: the state still decodes, and the session is rebuilt meanwhile
        malformed = bytearray(state)
        malformed[14] ^= 0xFF  # in the JSON header: the state no longer decodes either
        sessions_before = b.num_sessions
        with EdgeClient(b.address) as peer:
            for changed in (tampered, malformed):  # refused as tampered whatever else is wrong, nothing kept
                bad = ImportRequest(good, seal(state, good, SECRET), bytes(changed))
                with pytest.raises(EdgeAuthError, match="integrity"):
                    peer.call(METHOD_IMPORT, bad.to_bytes(), 10)
                assert b.num_sessions == sessions_before
        client.migrate(session, b.address, good)  # the real one succeeds ...
        assert session.session_id not in a.registry.ids()
        with EdgeClient(b.address) as peer:  # ... and a captured Import cannot be replayed
            with pytest.raises(EdgeAuthError, match="already used"):
                peer.call(METHOD_IMPORT, ImportRequest(good, seal(state, good, SECRET), state).to_bytes(), 10)
            peer.resume(good, 3).abort()


def test_a_session_moves_once_at_a_time_and_an_unreachable_destination_gets_one_plain_answer(
    edges, batches, monkeypatch
):
    import threading

    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5")
    x, y = batches[0]
    entered, release = threading.Event(), threading.Event()

    class SlowVerifier:  # the destination takes its time: the first Migrate holds one source worker meanwhile
        def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
            self.real = real

        def verify(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(30)
            return self.real.verify(*args, **kwargs)

    monkeypatch.setattr(b.migration, "verifier", SlowVerifier(b.migration.verifier))
    with EdgeClient(a.address) as client:
        session = _open_and_detach(client, model, ISSUER.issue(3, 23, 1, "edge-a"), x, y)
        good = ISSUER.issue(3, 23, 1, "edge-b", role="migration")
        request = MigrateRequest(session.session_id, session.token, b.address, good, None, 3).to_bytes()
        first: list[object] = []
        mover = threading.Thread(target=lambda: first.append(client.call(METHOD_MIGRATE, request, 60)))
        mover.start()
        assert entered.wait(30)
        with pytest.raises(EdgeError, match="already being migrated"):
            client.call(METHOD_MIGRATE, request, 10)
        release.set()
        mover.join(60)
        assert first and session.session_id not in a.registry.ids()  # the first move went through
        monkeypatch.undo()
        session = _open_and_detach(client, model, ISSUER.issue(3, 24, 1, "edge-a"), x, y)
        elsewhere = ISSUER.issue(3, 24, 1, "edge-x", role="migration")
        nowhere = MigrateRequest(session.session_id, session.token, "127.0.0.1:1", elsewhere, None, 3)
        with pytest.raises(EdgeError, match="did not answer") as refused:
            client.call(METHOD_MIGRATE, nowhere.to_bytes(), 30)
        assert "refused" not in str(refused.value).lower()  # no port scanning through the edge server
        assert session.session_id in a.registry.ids()  # kept: the device may still close or move it
        session.abort()
    for sid in b.registry.ids():
        b.registry.drop(sid, "test done")


def test_an_in_process_pool_migrates_only_to_the_peer_the_token_names_at_the_address_the_source_knows(batches):
    """With peers (in-process pools set them), the source dials the peer its migration token names, at its own
    address for it: the device's destination address is never dialled, and a token naming no peer is refused."""
    torch.manual_seed(0)
    model = build_model("vgg5")
    x, y = batches[0]
    with EdgePool.in_process(2) as pool, EdgeClient(pool.addresses[0]) as client:
        head, tail = model.split(3)

        def opened(node: int):  # type: ignore[no-untyped-def]
            pool.move(node, 0)  # every session starts on edge-0
            edge = pool.assign(4, node, 1)
            session = client.open_session(edge.token, model.spec, 3, tail.state_dict(), OPT)
            session.step(head(x).detach(), y, batch=0, batch_size=len(y))
            session.detach()
            return session

        session = opened(2)
        to_b = pool.migration_token(4, 2, 1, 1)
        client.migrate(session, "127.0.0.1:1", to_b)  # the device names a dead port: the source dials edge-1
        with EdgeClient(pool.addresses[1]) as peer:
            peer.resume(to_b, 3).abort()
        kept = opened(4)
        foreign = pool.issuer.issue(4, 4, 1, "edge-7", role="migration")  # signed, but edge-7 is no peer
        anywhere = pool.issuer.issue(4, 4, 1, None, role="migration")
        for token, needle in ((foreign, "'edge-7': not a peer"), (anywhere, "names no edge server")):
            with pytest.raises(EdgeAuthError, match=needle):
                client.migrate(kept, pool.addresses[1], token)
        with pytest.raises(EdgeAuthError, match="not a peer"):  # nor itself
            client.migrate(kept, pool.addresses[0], pool.migration_token(4, 4, 1, 0))
        pool._servers[0].set_peers({"edge-1": pool.addresses[1], "edge-9": "127.0.0.1:1"})  # edge-9 is down
        with pytest.raises(EdgeUnavailableError, match="the peer the migration token names did not answer") as down:
            client.migrate(kept, "edge-9.example:50051", pool.issuer.issue(4, 4, 1, "edge-9", role="migration"))
        assert "127.0.0.1:1" not in str(down.value)  # the device never learns a peer's address it did not know
        kept.abort()


def test_destination_refuses_a_state_for_another_model_or_split_point(edges, batches):
    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5")
    x, y = batches[0]
    with EdgeClient(a.address) as client:
        session = _open_and_detach(client, model, ISSUER.issue(3, 10, 1, "edge-a"), x, y)
        other_model = build_model("vgg5", norm="group").spec
        with pytest.raises(InvalidMessageError, match="model"):
            client.migrate(
                session, b.address, ISSUER.issue(3, 10, 1, "edge-b", role="migration"), expect_model=other_model
            )
        request = MigrateRequest(
            session.session_id, session.token, b.address, ISSUER.issue(3, 10, 1, "edge-b", role="migration"), None, 2
        )
        with pytest.raises(InvalidMessageError, match="split point"):
            client.call(METHOD_MIGRATE, request.to_bytes(), 10)
        assert session.session_id in a.registry.ids()
        a.registry.drop(session.session_id, "test done")


def test_operator_trigger_moves_a_running_node_at_the_next_batch_boundary(tmp_path, edges, batches):
    import subprocess
    import sys

    from edgeflower.device.mobility import MoveTrigger
    from tests.conftest import ROOT

    a, b = edges
    torch.manual_seed(0)
    initial = build_model("vgg5")
    unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
    _run(unmoved, batches, a.address, "edge-a", None)
    trigger_file = tmp_path / "move-trigger.json"
    tokens = [ISSUER.issue(3, 11, 1, e.edge_id, role="migration") for e in (a, b)]
    trigger = MoveTrigger(str(trigger_file), [a.address, b.address], tokens, current=0)
    fired_at = 3

    def stream():
        for i, batch in enumerate(batches):
            if i == fired_at:  # the operator fires just before batch 3 is drawn; the node moves before training it
                cmd = [sys.executable, "-m", "edgeflower.cli", "move", "--trigger", str(trigger_file), "--to", "1"]
                subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
            yield batch

    with EdgeClient(a.address) as client:
        trainer = PipelineTrainer(
            moved, 3, OPT, 1, open_session=EdgeSessions(client, tokens[0], moved.spec), move_trigger=trigger
        )
        result = trainer.train(stream())
    assert trigger.fired is not None and trigger.fired.at_batch == fired_at and trigger.current == 1
    assert not result.fell_back and not trigger_file.exists()
    assert _max_diff(unmoved, moved) <= 1e-6


@pytest.mark.parametrize(("micro_batches", "full"), [(1, True), (4, True), (4, False)])
def test_migration_with_dp_keeps_weights_noise_stream_and_epsilon(edges, batches, micro_batches, full, monkeypatch):
    """dp = full: the tail's DP state (noise generator, step count) moves too, so epsilon continues; split
    (one micro-batch) and pipelined; dp = device: the device's DP is unaffected by the move."""
    from edgeflower.privacy.dpsgd import DeviceDP
    from edgeflower.transport.messages import DPParams

    a, b = edges
    torch.manual_seed(0)
    initial = build_model("vgg5", norm="group")
    tail_dp = DPParams(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=32, sample_rate=0.1,
                       delta=1e-5, seed=123)  # fmt: skip

    def run(model, order, node):
        token = ISSUER.issue(run_id=3, node_id=node, server_round=1, edge_id="edge-a")
        device_dp = DeviceDP(1.0, 1.0, 32, 0.1, torch.Generator().manual_seed(7))
        with EdgeClient(a.address) as client:
            opener = EdgeSessions(client, token, model.spec, tail_dp if full else None)
            trainer = PipelineTrainer(model, 3, OPT, micro_batches, dp=device_dp, open_session=opener, move_order=order)
            return trainer.train(batches)

    unmoved, moved = copy.deepcopy(initial), copy.deepcopy(initial)
    node = 20 + 10 * micro_batches + int(full)
    still = run(unmoved, None, node=node)
    order = _order(b, at_batch=3, node=node + 100)
    ahead, in_migrate = count_exports(monkeypatch)
    result = run(moved, order, node=node + 100)
    assert not result.fell_back and order.report["migration-s"] > 0
    assert (ahead, in_migrate) == ([2], [])  # the DP state exported ahead of the move is what moved
    assert _max_diff(unmoved, moved) <= 1e-6  # same noise, same clipping: the move changed nothing
    if not full:
        return
    assert result.server_metrics["dp-steps"] == still.server_metrics["dp-steps"] == len(batches)
    assert result.server_metrics["dp-epsilon"] == pytest.approx(still.server_metrics["dp-epsilon"], abs=1e-9)
    assert result.server_metrics["dp-epsilon"] > 0


def test_restart_baseline_with_full_dp_reopens_the_destination_with_the_tails_dp(edges, batches):
    """The restart baseline opens a new session on the destination: with the tail's DP parameters (the opener's),
    it is as private as the first."""
    from edgeflower.privacy.dpsgd import DeviceDP
    from edgeflower.transport.messages import DPParams

    a, b = edges
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group")
    tail_dp = DPParams(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=32, sample_rate=0.1,
                       delta=1e-5, seed=123)  # fmt: skip

    token = ISSUER.issue(run_id=3, node_id=22, server_round=1, edge_id="edge-a")
    order = _order(b, at_batch=3, mode="restart", node=22)
    with EdgeClient(a.address) as client:
        trainer = PipelineTrainer(
            model,
            3,
            OPT,
            1,
            dp=DeviceDP(1.0, 1.0, 32, 0.1, torch.Generator().manual_seed(7)),
            open_session=EdgeSessions(client, token, model.spec, tail_dp),
            move_order=order,
        )
        result = trainer.train(batches)
    assert not result.fell_back and order.report["restart-s"] > 0
    assert result.server_metrics["dp-steps"] == len(batches)  # the whole round again, privately, on the destination
    assert result.server_metrics["dp-epsilon"] > 0
    assert wait_until(lambda: a.num_sessions == 0) and b.num_sessions == 0  # dropped once the source sees the cancel
