"""DP-SGD on the edge server's tail (``dp = full``): per-sample gradients, clip + noise at each batch's step.

The device sends the tail's *share* of one joint mechanism (:func:`~edgeflower.privacy.settings.side_share`:
clipping bound ``C / sqrt(2)``, noise std ``sigma * C``); the node accounts the whole step (head and tail on the
same Poisson batch) as one Gaussian mechanism of multiplier ``sigma``. The session counts its own steps and
returns them in the close reply's metrics (``dp_steps``; ``dp_epsilon`` is the tail's share taken alone, for
diagnostics only, never added to the node's budget).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgeflower.transport.messages import DPParams, SessionMetrics

if TYPE_CHECKING:  # imports Opacus (seconds): only runs with DP load it
    pass

__all__ = ["PrivateTail"]


class PrivateTail:
    """Make a session's tail and optimizer private.

    Parameters
    ----------
    tail : nn.Module
        The tail (hooks are attached in place; its state dict is unchanged).
    optimizer : torch.optim.Optimizer
        The session's SGD optimizer over the tail.
    params : DPParams
        From the open request.

    Raises
    ------
    ValueError
        The tail has layers Opacus cannot train (e.g. BatchNorm).
    """

    def __init__(self, tail: nn.Module, optimizer: torch.optim.Optimizer, params: DPParams) -> None:
        self.params = params
        seed = params.seed if params.seed >= 0 else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)  # its state migrates with the session
        from edgeflower.privacy.dpsgd import DeviceDP  # imports Opacus: only sessions with DP pay for it

        dp = DeviceDP(
            params.noise_multiplier,
            params.max_grad_norm,
            params.expected_batch_size,
            params.sample_rate,
            self.generator,
        )
        self.optimizer, self.hooks, self.accountant = dp.wrap(tail, optimizer)
        self._reported = 0

    @property
    def steps(self) -> int:
        """DP-SGD steps taken."""
        return self.optimizer.steps_taken

    def epsilon(self) -> float:
        """Epsilon this session's steps spent (at the request's delta)."""
        return float(self.accountant.get_epsilon(self.params.delta)) if self.accountant.history else 0.0

    def fill(self, metrics: SessionMetrics) -> SessionMetrics:
        """Add the steps taken since the last call to ``metrics.dp_steps`` and set the epsilon of all of them.

        Incremental, so that metrics carried over from another session (a migrated one, see
        :meth:`TrainingSession.resume_after`) keep the steps taken there.
        """
        metrics.dp_steps += self.steps - self._reported
        self._reported = self.steps
        metrics.dp_noise_multiplier = self.params.noise_multiplier
        metrics.dp_sample_rate = self.params.sample_rate
        from opacus.accountants import RDPAccountant  # Opacus is loaded: this session's DeviceDP imported it

        acc = RDPAccountant()
        if metrics.dp_steps:
            acc.history = [(self.params.noise_multiplier, self.params.sample_rate, metrics.dp_steps)]
        metrics.dp_epsilon = float(acc.get_epsilon(self.params.delta)) if acc.history else 0.0
        return metrics

    def release(self) -> None:
        """Detach the hooks."""
        self.hooks.remove_hooks()
