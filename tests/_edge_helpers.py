"""Shared helpers of the transport and edge-server tests (data, reference training, certificates, processes)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from edgeflower.data import BatchLoader, load_dataset
from edgeflower.edge import migration
from edgeflower.edge.migration import MigrationHandlers, export_session
from edgeflower.edge.session import TrainingSession
from edgeflower.models.splittable import SplittableModel
from edgeflower.models.zoo import build_model
from edgeflower.process import ListeningProcess
from edgeflower.training import make_optimizer
from edgeflower.transport import EdgeClient, OptimizerSettings, SessionMetrics, TokenIssuer, TokenVerifier
from edgeflower.transport.messages import DPParams, OpenRequest

SECRET = b"edgeflower-test-secret-0123456789abcdef"
ISSUER = TokenIssuer(SECRET)
OPTIM = OptimizerSettings(lr=0.05, momentum=0.9, weight_decay=1e-4)
REPO = Path(__file__).resolve().parents[1]

Batch = tuple[torch.Tensor, torch.Tensor]


def token(node: int = 1, run: int = 7, server_round: int = 1, **kw: object) -> str:
    """A valid token for ``node``."""
    return ISSUER.issue(run, node, server_round, **kw)  # type: ignore[arg-type]


def training_session(
    model: SplittableModel,
    k: int,
    state: dict[str, torch.Tensor],
    *,
    wire: str = "float32",
    dp: DPParams | None = None,
    optim: OptimizerSettings = OPTIM,
) -> TrainingSession:
    """An edge server's session for ``model``'s tail from block ``k`` with weights ``state``, built in process."""
    tok = token()
    claims = TokenVerifier(SECRET).verify(tok)
    return TrainingSession("s1", claims, tok, OpenRequest(tok, model.spec, k, optim, state, wire_dtype=wire, dp=dp))


def fashion_batches(num_batches: int = 3, batch_size: int = 16, seed: int = 0) -> list[Batch]:
    """A few batches of real Fashion-MNIST (test split: faster to load)."""
    loader = BatchLoader(load_dataset("fashion-mnist", train=False), batch_size, seed=seed, max_batches=num_batches)
    return [(x.clone(), y.clone()) for x, y in loader]


def fresh_model(name: str, seed: int = 0, **options: object) -> SplittableModel:
    """A zoo model with seeded initial weights."""
    torch.manual_seed(seed)
    return build_model(name, **options)


def train_reference(model: SplittableModel, batches: Sequence[Batch], optim: OptimizerSettings = OPTIM) -> dict:
    """Local training of the whole model: one SGD step per batch, cross-entropy mean."""
    opt = make_optimizer(model.parameters(), optim.lr, optim.momentum, optim.weight_decay)
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict()


def train_split(
    client: EdgeClient,
    model: SplittableModel,
    k: int,
    batches: Sequence[Batch],
    optim: OptimizerSettings = OPTIM,
    micro: int = 1,
    node: int = 1,
    pipelined: bool = False,
) -> tuple[dict, SessionMetrics]:
    """Split training of ``model`` at ``k`` through ``client``; return the merged full state dict and metrics.

    With ``micro > 1`` each batch is cut into ``micro`` micro-batches; ``pipelined`` sends all of a batch's
    micro-batches before receiving any result.
    """
    head, tail = model.split(k)
    head.train()
    head_opt = make_optimizer(head.parameters(), optim.lr, optim.momentum, optim.weight_decay) if k else None
    session = client.open_session(token(node), model.spec, k, tail.state_dict(), optim)
    for b, (x, y) in enumerate(batches):
        if head_opt is not None:
            head_opt.zero_grad(set_to_none=True)
        chunks = list(zip(x.chunk(micro), y.chunk(micro), strict=True))
        acts = []
        for i, (xm, ym) in enumerate(chunks):
            act = head(xm)
            acts.append(act)
            session.send(act.detach(), ym, batch=b, micro=i, num_micro=len(chunks), batch_size=len(y))
            if not pipelined:
                _apply(session.recv(), act, k)
        if pipelined:
            for act in acts:
                _apply(session.recv(), act, k)
        if head_opt is not None:
            head_opt.step()
    tail_state, metrics = session.close()
    full = {**head.state_dict(), **tail_state}
    return full, metrics


def _apply(result: object, act: torch.Tensor, k: int) -> None:
    if k:
        act.backward(result.grad)  # type: ignore[attr-defined]


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert set(a) == set(b), set(a) ^ set(b)
    return max(float((a[key].double() - b[key].double()).abs().max()) if a[key].numel() else 0.0 for key in a)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def count_exports(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """Batches after which the source exported: (as a stream ended ahead of a move, in Migrate)."""
    ahead: list[int] = []
    in_migrate: list[int] = []
    early: list[bool] = []  # non-empty while export_ahead runs
    real_ahead = MigrationHandlers.export_ahead

    def export_ahead(self, session) -> None:  # type: ignore[no-untyped-def]
        early.append(True)
        try:
            real_ahead(self, session)
        finally:
            early.pop()

    def export(s, limits=None):  # type: ignore[no-untyped-def]
        (ahead if early else in_migrate).append(s.last_batch)
        return export_session(s, limits)

    monkeypatch.setattr(MigrationHandlers, "export_ahead", export_ahead)
    monkeypatch.setattr(migration, "export_session", export)
    return ahead, in_migrate


def thread_names() -> list[str]:
    """Names of the live threads."""
    return sorted(t.name for t in threading.enumerate())


def self_signed_cert(common_name: str = "localhost") -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for ``localhost`` and ``127.0.0.1``, and its private key (PEM)."""
    from edgeflower.testbed.certs import self_signed

    return self_signed(["127.0.0.1"], common_name, dns_names=["localhost"])


CRASH_EXIT_CODE = 137
"""The exit status of an edge server killed by :data:`_CRASH_AFTER_MIGRATION_ACK` (as after a SIGKILL)."""

_CRASH_AFTER_MIGRATION_ACK = f"""
import functools, os, sys
from edgeflower.commands import edge_server
from edgeflower.edge.server import EdgeServer

def crash(session_id, destination):  # fault injection: the source dies after the ack, before answering the device
    print("edge server: fault injection: exiting right after the migration ack", flush=True)
    os._exit({CRASH_EXIT_CODE})

edge_server.EdgeServer = functools.partial(EdgeServer, on_migration_acked=crash)
from edgeflower.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""A test-only launcher of ``edgeflower edge-server`` whose process exits right after a destination acknowledged a
migrated session: it installs a crash on :class:`EdgeServer`'s ``on_migration_acked`` seam (production code has no
fault injection)."""


class EdgeProcess(ListeningProcess):
    """``edgeflower edge-server`` in a subprocess on a free port; always stop it in ``finally`` (or use ``with``).

    Its stderr is merged into stdout, which a thread drains, so a chatty server can never block on a full pipe.
    With ``crash_after_migration_ack`` the process exits with :data:`CRASH_EXIT_CODE` right after a destination
    acknowledged a session it migrated away (before the device is answered).
    """

    def __init__(
        self,
        secret_file: Path,
        *extra: str,
        startup_timeout_s: float = 180.0,
        crash_after_migration_ack: bool = False,
    ) -> None:
        args = ["edge-server", "--port", "0", "--secret-file", str(secret_file), *extra]
        launcher = [sys.executable, "-c", _CRASH_AFTER_MIGRATION_ACK] if crash_after_migration_ack else None
        super().__init__(
            args, "edge server listening on ", cwd=REPO, startup_timeout_s=startup_timeout_s, launcher=launcher
        )
