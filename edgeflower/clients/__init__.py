"""ClientApp building blocks: local, split (sequential), pipelined, DP, mobility."""

from edgeflower.clients.local import TrainResult, evaluate, make_optimizer, train_local
from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.clients.proximal import ProximalSGD
from edgeflower.clients.split import OffloadError, SplitResult, SplitTrainer

__all__ = [
    "OffloadError",
    "PipelineTrainer",
    "ProximalSGD",
    "SplitResult",
    "SplitTrainer",
    "TrainResult",
    "evaluate",
    "make_optimizer",
    "train_local",
]
