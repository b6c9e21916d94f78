"""A killed controller process restarts from its journal: nothing lost, nothing answered twice."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter

import pytest
import torch

from edgeflower.serving import ServingClient, build_bundle
from tests._serving_helpers import SECRET, ServingProcess, client_token, split_data, start_node, train_briefly

CUTS = (0, 2, 4, 7)


@pytest.fixture(scope="module")
def vgg_bundle_dir(fmnist_train, fmnist_test, tmp_path_factory):
    """A VGG5 trained for 100 batches, bundled over 3 nodes, saved to disk."""
    model = train_briefly("vgg5", fmnist_train, 100)
    _, val, _ = split_data(fmnist_test, 0, 1000, 0)
    bundle = build_bundle(model, CUTS, fmnist_train.subset(torch.arange(2000)), val, exit_epochs=3)
    return bundle.save(tmp_path_factory.mktemp("bundle"))


def _controller(config_path, port: int | None = None) -> ServingProcess:
    extra = ["--port", str(port)] if port is not None else []
    return ServingProcess("serve", "--config", str(config_path), *extra, ready="controller listening on ")


def test_controller_restart_loses_nothing_and_answers_nothing_twice(vgg_bundle_dir, fmnist_test, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    journal = tmp_path / "journal.jsonl"
    procs: list[ServingProcess] = []
    try:
        procs += [start_node(secret_file) for _ in range(3)]
        config = {
            "bundle": str(vgg_bundle_dir),
            "nodes": [p.address for p in procs],
            "secret_file": "secret",
            "journal": "journal.jsonl",
            "heartbeat_s": 0.2,
        }
        (tmp_path / "serve.json").write_text(json.dumps(config))
        first = _controller(tmp_path / "serve.json")
        procs.append(first)
        port = int(first.address.rsplit(":", 1)[1])
        x = fmnist_test.x[:16]
        answers: dict[str, list] = {}
        errors: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            with ServingClient(first.address, client_token(), deadline_s=60) as client:
                i = 0
                while not stop.is_set():
                    try:
                        p = client.predict(x, f"req-{i}")
                    except BaseException as exc:  # asserted below
                        errors.append(exc)
                        return
                    answers.setdefault(p.request_id, []).append(p)
                    i += 1

        with ServingClient(first.address, client_token(2)) as client:
            before = client.predict(fmnist_test.x[16:32], "answered-before-crash")
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        while len(answers) < 20 and not errors:
            time.sleep(0.01)
        first.sigkill()  # mid-load: a request may be accepted but unanswered, or answered but not delivered
        sent_at_kill = len(answers)
        # a request the crashed controller had accepted but never answered (journalled by hand)
        orphan_x = fmnist_test.x[32:40]
        sha = hashlib.sha256(orphan_x.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        with journal.open("a") as f:
            f.write(json.dumps({"e": "accepted", "id": "2/orphan-1", "sha": sha, "t": 0}) + "\n")  # client 2's
        second = _controller(tmp_path / "serve.json", port)
        procs.append(second)
        while len(answers) < sent_at_kill + 20 and not errors:
            time.sleep(0.01)
        stop.set()
        thread.join(60)
        assert not errors, errors
        with ServingClient(second.address, client_token(2)) as client:
            assert "orphan-1" in client.status()["pending"]
            recovered = client.predict(orphan_x, "orphan-1")
            assert recovered.recovered and not recovered.replayed
            again = client.predict(orphan_x, "orphan-1")
            assert again.replayed and torch.equal(again.logits, recovered.logits)
            replay = client.predict(fmnist_test.x[16:32], "answered-before-crash")
            assert replay.replayed and torch.equal(replay.logits, before.logits)
            assert client.status()["pending"] == []
        assert all(len(v) == 1 for v in answers.values())
        assert set(answers) == {f"req-{i}" for i in range(len(answers))}  # none skipped
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        answered = Counter(e["id"] for e in lines if e["e"] == "answered")
        assert max(answered.values()) == 1 and {f"1/{r}" for r in answers} <= set(answered)  # client 1's load
    finally:
        for p in procs:
            p.kill()
