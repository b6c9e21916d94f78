"""Device-side trainers of split training: sequential (:class:`SplitTrainer`), pipelined (:class:`PipelineTrainer`),
and moving between edge servers (:mod:`~edgeflower.clients.mobility`).

The training steps they share with the edge server, pruning and serving (optimizer, local pass, micro-batch loss,
evaluation, FedProx's :class:`~edgeflower.training.ProximalSGD`) live in :mod:`edgeflower.training`.
"""

from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.clients.split import OffloadError, SplitResult, SplitTrainer

__all__ = ["OffloadError", "PipelineTrainer", "SplitResult", "SplitTrainer"]
