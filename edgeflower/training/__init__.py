"""Neutral training steps below the device trainers, the edge server, pruning and serving.

:mod:`~edgeflower.training.steps`: the SGD optimizer, one local pass (:func:`train_local`), the tail's
(micro-)batch loss (:func:`micro_batch_loss`) and evaluation; :mod:`~edgeflower.training.proximal`: FedProx's
proximal term as an optimizer (:class:`ProximalSGD`), so it splits across the device and the edge server.
"""

from edgeflower.training.proximal import ProximalSGD, sgd
from edgeflower.training.steps import TrainResult, evaluate, make_optimizer, micro_batch_loss, train_local

__all__ = ["ProximalSGD", "TrainResult", "evaluate", "make_optimizer", "micro_batch_loss", "sgd", "train_local"]
