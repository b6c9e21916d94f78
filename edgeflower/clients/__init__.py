"""ClientApp building blocks: local, split (sequential), pipelined, DP, mobility."""

from edgeflower.clients.local import TrainResult, evaluate, make_optimizer, train_local

__all__ = ["TrainResult", "evaluate", "make_optimizer", "train_local"]
