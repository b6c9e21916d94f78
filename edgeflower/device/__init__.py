"""Device-side trainers of split training: sequential (:class:`SplitTrainer`), pipelined (:class:`PipelineTrainer`),
and moving between edge servers (:mod:`~edgeflower.device.mobility`); a trainer opens its round's edge session
with an :class:`EdgeSessions` (:mod:`~edgeflower.device.sessions`) and reports a :class:`SplitResult`
(:mod:`~edgeflower.device.result`).

The training steps they share with the edge server, pruning and serving (optimizer, local pass, micro-batch loss,
evaluation, FedProx's :class:`~edgeflower.training.ProximalSGD`) live in :mod:`edgeflower.training`.
"""

from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.result import OffloadError, SplitResult
from edgeflower.device.sessions import EdgeSessions
from edgeflower.device.split import SplitTrainer

__all__ = ["EdgeSessions", "OffloadError", "PipelineTrainer", "SplitResult", "SplitTrainer"]
