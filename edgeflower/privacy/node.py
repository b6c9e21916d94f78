"""A node's DP-SGD round: sampling, noise, budget check and cumulative accounting in ``context.state``.

Per round a node with ``N`` samples takes ``steps_per_round`` Poisson draws at rate ``q = batch-size / N``. Its
:class:`~edgeflower.privacy.accounting.PrivacyHistory` (in ``context.state``) gains ``(sigma, q, draws)`` for the
device-side part and, in ``full`` split rounds, the edge session's ``(sigma, q, steps)`` (two releases per step,
composed by the RDP accountant). Before training, the node checks that the round fits its budget
(``dp-target-epsilon``); if not it does not train and says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import RecordDict
from flwr.common.logger import log

from edgeflower.privacy.accounting import PrivacyHistory
from edgeflower.privacy.dpsgd import DeviceDP
from edgeflower.privacy.sampling import PoissonBatches
from edgeflower.privacy.settings import DPSettings, steps_per_round
from edgeflower.transport.messages import DPParams

__all__ = ["NodeRoundDP"]

_EPS_TOLERANCE = 1e-9


@dataclass
class NodeRoundDP:
    """One node's DP-SGD round.

    Parameters
    ----------
    settings : DPSettings
        The run's DP settings.
    state : RecordDict
        The node's ``context.state`` (holds the accountant history across rounds).
    num_samples : int
        Partition size ``N``.
    batch_size : int
        Expected batch size ``B`` (``q = B / N``).
    local_epochs, max_batches, num_rounds : int
        As in the run config (for the steps per round and the noise calibration).
    split : bool
        Whether this round offloads a tail to an edge server.
    noise_seed : int, optional
        Seed of the noise (tests only; default: a fresh random seed each round).
    """

    settings: DPSettings
    state: RecordDict
    num_samples: int
    batch_size: int
    local_epochs: int
    max_batches: int
    num_rounds: int
    split: bool
    noise_seed: int | None = None
    history: PrivacyHistory = field(init=False)

    def __post_init__(self) -> None:
        self.history = PrivacyHistory.load(self.state)
        self.sample_rate = min(1.0, self.batch_size / max(1, self.num_samples))
        self.steps = steps_per_round(self.num_samples, self.batch_size, self.local_epochs, self.max_batches)
        self.tail_private = self.settings.tail_private(self.split)
        mechanisms = 2 if self.settings.mode == "full" and self.split else 1
        self.noise_multiplier = self.settings.noise_for(self.sample_rate, self.steps * self.num_rounds, mechanisms)
        self.sampler: PoissonBatches | None = None

    @property
    def epsilon(self) -> float:
        """Epsilon the node has spent so far (all rounds, device and edge)."""
        return self.history.epsilon(self.settings.delta)

    def exhausted(self, node: str) -> bool:
        """Whether this round would take the node beyond ``dp-target-epsilon`` (logged when it would)."""
        if not self.settings.target_epsilon:
            return False
        entry = (self.noise_multiplier, self.sample_rate, self.steps)
        after = self.history.epsilon_after(self.settings.delta, [entry] * (2 if self.tail_private else 1))
        if after <= self.settings.target_epsilon + _EPS_TOLERANCE:
            return False
        log(
            WARNING,
            "dp: %s stops training: privacy budget exhausted (spent epsilon %.4f, this round would reach %.4f > "
            "dp-target-epsilon %.4f at delta %g)",
            node,
            self.epsilon,
            after,
            self.settings.target_epsilon,
            self.settings.delta,
        )
        return True

    def batches(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> PoissonBatches:
        """The round's Poisson-sampled batches."""
        self.sampler = PoissonBatches(x, y, self.sample_rate, self.steps, seed)
        return self.sampler

    def _generator(self, offset: int) -> torch.Generator:
        seed = secrets.randbits(63) if self.noise_seed is None else self.noise_seed + offset
        return torch.Generator().manual_seed(seed)

    def device(self) -> DeviceDP:
        """DP-SGD settings of the device-side part."""
        s = self.settings
        return DeviceDP(self.noise_multiplier, s.max_grad_norm, self.batch_size, self.sample_rate, self._generator(0))

    def tail_params(self) -> DPParams | None:
        """DP-SGD settings for the edge session (``full`` split rounds), else ``None``."""
        if not self.tail_private:
            return None
        seed = -1 if self.noise_seed is None else self.noise_seed + 1
        s = self.settings
        return DPParams(self.noise_multiplier, s.max_grad_norm, self.batch_size, self.sample_rate, s.delta, seed)

    def finish(self, session: Mapping[str, float] | None = None, session_failed: bool = False) -> dict[str, float]:
        """Add the round's releases to the node's history, store it in ``context.state``, return the metrics.

        The device-side part counts every Poisson draw. In ``full`` rounds the edge session's own history comes
        back in its close metrics (``session``: ``dp-steps``, ``dp-noise-multiplier``, ``dp-sample-rate``,
        ``dp-epsilon``, as in :attr:`SplitResult.server_metrics`); if the session failed, the draws are counted for
        the tail too (an upper bound).
        """
        drawn = self.sampler.drawn if self.sampler is not None else 0
        self.history.add(self.noise_multiplier, self.sample_rate, drawn)
        edge_eps = 0.0
        if self.tail_private:
            if session and not session_failed:
                self.history.add(session["dp-noise-multiplier"], session["dp-sample-rate"], int(session["dp-steps"]))
                edge_eps = float(session["dp-epsilon"])
            else:
                self.history.add(self.noise_multiplier, self.sample_rate, drawn)
        self.history.save(self.state)
        eps = self.epsilon
        log(
            INFO,
            "dp: round spent %d steps at noise %.4f, q %.5f; epsilon so far %.4f",
            drawn,
            self.noise_multiplier,
            self.sample_rate,
            eps,
        )
        return {
            "dp-epsilon": eps,
            "dp-edge-epsilon": edge_eps,
            "dp-steps": self.history.steps,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-sample-rate": self.sample_rate,
            "dp-delta": self.settings.delta,
            "dp-stopped": 0,
        }

    def stopped_metrics(self) -> dict[str, float]:
        """Metrics of a round the node did not train (budget exhausted)."""
        return {
            "dp-epsilon": self.epsilon,
            "dp-edge-epsilon": 0.0,
            "dp-steps": self.history.steps,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-sample-rate": self.sample_rate,
            "dp-delta": self.settings.delta,
            "dp-stopped": 1,
        }
