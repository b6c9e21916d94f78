"""A node's DP-SGD round: sampling, noise, budget check and cumulative accounting in ``context.state``.

Per round a node with ``N`` samples takes ``steps_per_round`` Poisson draws at rate ``q = batch-size / N`` (masks
from the OS's CSPRNG, see :mod:`~edgeflower.privacy.sampling`). Every draw is **one** subsampled Gaussian
mechanism of noise multiplier ``sigma``, in every mode, and the node's
:class:`~edgeflower.privacy.accounting.PrivacyHistory` (in ``context.state``) gains ``(sigma, q, draws)``:

* ``dp = device``: the device-side part (the whole model in ``fl``, the head in split rounds) is clipped to ``C``
  and noised with ``N(0, sigma^2 C^2)``. In a split round the epsilon covers the head only (``dp-scope = head``):
  the tail is trained without DP by the edge server and published in the reply.
* ``dp = full`` in a split round: head and tail are clipped *jointly*. Each side clips each sample's gradient to
  ``C / sqrt(2)`` (so the whole model's per-sample gradient has norm ``<= C``) and adds noise of std
  ``sigma * C`` (:func:`~edgeflower.privacy.settings.side_share`). Both sides use the same Poisson batch, so the
  step is one Gaussian mechanism on the concatenated gradient with sensitivity ``C`` and noise ``sigma * C``:
  multiplier ``sigma``, the same as ``fl`` with ``dp = device`` for the same config (``dp-scope = model``).

Noise calibration (``"auto"``) and the budget stop use the same history and the run's accountant
(``dp-accountant``). Before training, the node checks that the round fits its budget (``dp-target-epsilon``); if
not it does not train and says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import TYPE_CHECKING

import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common.logger import log

from edgeflower.privacy.accounting import PrivacyHistory
from edgeflower.privacy.sampling import PoissonBatches
from edgeflower.privacy.settings import ACCOUNTANTS, DPSettings, side_share, steps_per_round
from edgeflower.transport.messages import DPParams

if TYPE_CHECKING:  # imports Opacus (seconds): only runs with DP load it
    from edgeflower.privacy.dpsgd import DeviceDP

__all__ = ["NodeRoundDP", "scope_warning"]

_EPS_TOLERANCE = 1e-9


def scope_warning(mode: str, split: bool) -> str | None:
    """The WARNING a run logs at start when its epsilon does not cover the published model (else ``None``)."""
    if mode != "device" or not split:
        return None
    return (
        "dp = device in a split mode: epsilon (dp-epsilon, dp-scope = head) covers the device-side head only. "
        "The edge server trains the tail WITHOUT DP and the tail is published in every reply; the edge server also "
        'sees the activations and the labels. Use dp = "full" to make the whole published model private.'
    )


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
        Seed of the noise (tests only; default: a fresh seed from the OS's CSPRNG each round).
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
        self.scope = self.settings.scope(self.split)
        self.noise_multiplier = self.settings.noise_for(self.sample_rate, self.steps * self.num_rounds)
        sides = 2 if self.tail_private else 1
        self.side_noise, self.side_clip = side_share(self.noise_multiplier, self.settings.max_grad_norm, sides)
        self.sampler: PoissonBatches | None = None

    def epsilon_by(self, kind: str) -> float:
        """Epsilon spent so far (all rounds) by accountant ``kind``."""
        return self.history.epsilon(self.settings.delta, kind)

    @property
    def epsilon(self) -> float:
        """Epsilon the node has spent so far (all rounds), by the run's accountant."""
        return self.epsilon_by(self.settings.accountant)

    def exhausted(self, node: str) -> bool:
        """Whether this round would take the node beyond ``dp-target-epsilon`` (logged when it would)."""
        if not self.settings.target_epsilon:
            return False
        entry = (self.noise_multiplier, self.sample_rate, self.steps)
        after = self.history.epsilon_after(self.settings.delta, [entry], self.settings.accountant)
        if after <= self.settings.target_epsilon + _EPS_TOLERANCE:
            return False
        log(
            WARNING,
            "dp: %s stops training: privacy budget exhausted (spent epsilon %.4f, this round would reach %.4f > "
            "dp-target-epsilon %.4f at delta %g, %s accountant)",
            node,
            self.epsilon,
            after,
            self.settings.target_epsilon,
            self.settings.delta,
            self.settings.accountant,
        )
        return True

    def batches(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> PoissonBatches:
        """The round's Poisson-sampled batches (masks from the OS's CSPRNG unless a test passes ``generator``)."""
        self.sampler = PoissonBatches(x, y, self.sample_rate, self.steps, generator)
        return self.sampler

    def _generator(self, offset: int) -> torch.Generator:
        seed = secrets.randbits(63) if self.noise_seed is None else self.noise_seed + offset
        return torch.Generator().manual_seed(seed)

    def device(self) -> DeviceDP:
        """DP-SGD settings of the device-side part (its share of the clipping bound in ``full`` split rounds)."""
        from edgeflower.privacy.dpsgd import DeviceDP  # imports Opacus: only DP rounds pay for it

        return DeviceDP(self.side_noise, self.side_clip, self.batch_size, self.sample_rate, self._generator(0))

    def tail_params(self) -> DPParams | None:
        """DP-SGD settings for the edge session (``full`` split rounds: the tail's share), else ``None``."""
        if not self.tail_private:
            return None
        seed = -1 if self.noise_seed is None else self.noise_seed + 1
        return DPParams(self.side_noise, self.side_clip, self.batch_size, self.sample_rate, self.settings.delta, seed)

    def scope_record(self) -> ConfigRecord:
        """The reply's ``dp`` record: ``dp-scope`` (``"head"`` or ``"model"``) and the accountant that reports.

        A string cannot be a metric, so it travels in a ConfigRecord next to the metrics (the ServerApp's
        recorders see both).
        """
        return ConfigRecord({"dp-scope": self.scope, "dp-accountant": self.settings.accountant})

    def _epsilon_or_unknown(self, kind: str) -> float:
        if kind == self.settings.accountant:
            return self.epsilon_by(kind)
        if not self.settings.compare:
            return -1.0
        try:  # the other accountant is for comparison only: never fail a round over it
            return self.epsilon_by(kind)
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            log(WARNING, "dp: the %s accountant could not compute epsilon for comparison: %s", kind, exc)
            return -1.0

    def _metrics(self, stopped: bool, edge_steps: int = 0, round_steps: int = 0) -> dict[str, float]:
        eps = {kind: self._epsilon_or_unknown(kind) for kind in ACCOUNTANTS}
        return {
            "dp-epsilon": eps[self.settings.accountant],
            **{f"dp-epsilon-{kind}": value for kind, value in eps.items()},
            "dp-mechanisms-per-step": 1,  # one subsampled Gaussian per step for what is clipped together
            "dp-edge-steps": edge_steps,
            "dp-round-steps": round_steps,  # this round's steps; dp-steps counts all rounds (what epsilon is of)
            "dp-steps": self.history.steps,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-sample-rate": self.sample_rate,
            "dp-delta": self.settings.delta,
            "dp-stopped": int(stopped),
        }

    def finish(self, session: Mapping[str, float] | None = None, session_failed: bool = False) -> dict[str, float]:
        """Add the round's draws to the node's history, store it in ``context.state``, return the metrics.

        One entry ``(sigma, q, draws)`` per round, in every mode: in ``full`` split rounds the edge session trains
        the tail on the same Poisson batches, so its steps are part of the same mechanisms (its step count comes
        back in ``session["dp-steps"]`` and is reported as ``dp-edge-steps``; it never exceeds the draws). If the
        session failed, the round stopped at that batch and every draw made so far is counted.
        """
        drawn = self.sampler.drawn if self.sampler is not None else 0
        self.history.add(self.noise_multiplier, self.sample_rate, drawn)
        self.history.save(self.state)
        edge_steps = int(session.get("dp-steps", 0)) if self.tail_private and session and not session_failed else 0
        metrics = self._metrics(False, edge_steps, drawn)
        other = next(k for k in ACCOUNTANTS if k != self.settings.accountant)
        compared = metrics[f"dp-epsilon-{other}"]
        log(
            INFO,
            "dp: round spent %d steps (%d in all rounds, as privacy.json counts) at noise %.4f, q %.5f (%s); "
            "epsilon so far %.4f (%s; %s: %s), scope %s",
            drawn,
            self.history.steps,
            self.noise_multiplier,
            self.sample_rate,
            "head and tail clipped jointly" if self.tail_private else "one part",
            metrics["dp-epsilon"],
            self.settings.accountant,
            other,
            f"{compared:.4f}" if compared >= 0 else "not computed",
            self.scope,
        )
        return metrics

    def stopped_metrics(self) -> dict[str, float]:
        """Metrics of a round the node did not train (budget exhausted)."""
        return self._metrics(True)
