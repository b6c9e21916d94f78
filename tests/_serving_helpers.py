"""Shared helpers of the serving tests: briefly trained models, bundles, and node/controller processes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from edgeflower.clients.local import make_optimizer, train_local
from edgeflower.data import BatchLoader
from edgeflower.data.datasets import ImageData
from edgeflower.models.splittable import SplittableModel
from edgeflower.models.zoo import build_model
from edgeflower.transport.auth import TokenIssuer

SECRET = b"edgeflower-serving-test-secret-0123456789"
REPO = Path(__file__).resolve().parents[1]


def client_token(client: int = 1, secret: bytes = SECRET) -> str:
    """A predict token for ``client``."""
    return TokenIssuer(secret).issue(0, client, 0)


def train_briefly(name: str, data: ImageData, batches: int, seed: int = 0, **options: object) -> SplittableModel:
    """A zoo model trained for ``batches`` SGD steps of 64 real samples; eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, **options)
    opt = make_optimizer(model.parameters(), 0.05, 0.9)
    train_local(model, BatchLoader(data, 64, seed=seed, max_batches=batches), opt)
    return model.eval()


def split_data(data: ImageData, n_train: int, n_val: int, n_test: int) -> tuple[ImageData, ImageData, ImageData]:
    """Disjoint train/validation/test subsets of the test split."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    a, b = n_train, n_train + n_val
    return data.subset(idx[:a]), data.subset(idx[a:b]), data.subset(idx[b : b + n_test])


class ServingProcess:
    """An ``edgeflower`` serving subcommand in a subprocess; waits for its ``listening on HOST:PORT`` line.

    Always stop it in ``finally`` (or use ``with``). Output is drained by a thread and kept in :attr:`output`.
    """

    def __init__(self, *args: str, ready: str, startup_timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflower.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._reader.start()
        self.address = ""
        deadline = time.monotonic() + startup_timeout_s
        try:
            while not self.address:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if line.startswith(ready):
                    self.address = line.rsplit(" ", 1)[1].strip()
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"{args[0]} did not start:\n{''.join(self.output)[-3000:]}") from None

    def _pump(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            lines.put(line)

    def sigkill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL if still running, reap, close the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServingProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def start_node(secret_file: Path) -> ServingProcess:
    """``edgeflower infer-node`` on a free loopback port."""
    return ServingProcess(
        "infer-node", "--port", "0", "--secret-file", str(secret_file), ready="inference node listening on "
    )
