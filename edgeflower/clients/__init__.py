"""Device-side trainers of split training: sequential (:class:`SplitTrainer`), pipelined (:class:`PipelineTrainer`),
and moving between edge servers (:mod:`~edgeflower.clients.mobility`); a trainer opens its round's edge session
with an :class:`EdgeSessions` (:mod:`~edgeflower.clients.sessions`) and reports a :class:`SplitResult`
(:mod:`~edgeflower.clients.result`).

The training steps they share with the edge server, pruning and serving (optimizer, local pass, micro-batch loss,
evaluation, FedProx's :class:`~edgeflower.training.ProximalSGD`) live in :mod:`edgeflower.training`.
"""

from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.clients.result import OffloadError, SplitResult
from edgeflower.clients.sessions import EdgeSessions
from edgeflower.clients.split import SplitTrainer

__all__ = ["EdgeSessions", "OffloadError", "PipelineTrainer", "SplitResult", "SplitTrainer"]
