"""Shared helpers of the serving tests: briefly trained models, bundles, and node/controller processes."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeflower.data import BatchLoader
from edgeflower.data.datasets import ImageData
from edgeflower.models.splittable import SplittableModel
from edgeflower.models.zoo import build_model
from edgeflower.process import ListeningProcess
from edgeflower.training import make_optimizer, train_local
from edgeflower.transport.auth import TokenIssuer

SECRET = b"edgeflower-serving-test-secret-0123456789"
REPO = Path(__file__).resolve().parents[1]


def client_token(client: int = 1, secret: bytes = SECRET) -> str:
    """A predict token for ``client``."""
    return TokenIssuer(secret).issue(0, client, 0, role="client")


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


class ServingProcess(ListeningProcess):
    """An ``edgeflower`` serving subcommand in a subprocess; waits for its ``listening on HOST:PORT`` line.

    Always stop it in ``finally`` (or use ``with``). Output is drained by a thread and kept in :attr:`output`.
    """

    def __init__(self, *args: str, ready: str, startup_timeout_s: float = 60.0) -> None:
        super().__init__(args, ready, cwd=REPO, startup_timeout_s=startup_timeout_s)


def start_node(secret_file: Path) -> ServingProcess:
    """``edgeflower infer-node`` on a free loopback port."""
    return ServingProcess(
        "infer-node", "--port", "0", "--secret-file", str(secret_file), ready="inference node listening on "
    )
