"""DP-SGD on a module: Opacus' per-sample gradient hooks and one clip + noise step per batch.

:func:`make_private` attaches Opacus' :class:`~opacus.grad_sample.GradSampleHooks` to a module *without wrapping
it* (so its state dict never gains Opacus' ``_module.`` prefix). The hooks compute per-sample gradients from the
activations and the gradient flowing back into the module, so they work when the backward pass is driven by an
external gradient (a split head's ``act.backward(grad)``) just as for a loss.

:class:`BatchDPOptimizer` is Opacus' :class:`~opacus.optimizers.DPOptimizer` (clip each sample's gradient to
``max_grad_norm`` over *all* the module's parameters, sum, add ``N(0, (noise_multiplier * max_grad_norm)^2)``,
divide by the expected batch size) with one difference: our losses are the mean over the *whole batch*, possibly
back-propagated in several micro-batches (pipelined training scales micro-batch ``j``'s mean loss by
``n_j / B``). Before clipping it concatenates the micro-batches' per-sample gradients and multiplies them by the
batch's sample count, which turns them into each sample's own loss gradient; so clipping is per *sample* over the
whole batch, and there is exactly one clip + noise step per batch however it was cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from torch import nn

from edgeflower.privacy.models import prepare_model

__all__ = ["BatchDPOptimizer", "DeviceDP", "make_private"]

warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect")


def make_private(module: nn.Module) -> GradSampleHooks:
    """Prepare ``module`` (see :func:`~edgeflower.privacy.models.prepare_model`) and attach per-sample gradient
    hooks to it in place; call ``.remove_hooks()`` on the result when training is over."""
    prepare_model(module)
    return GradSampleHooks(module, batch_first=True, loss_reduction="sum", strict=True)


class BatchDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer for batch-mean losses back-propagated in one or more micro-batches (see module doc).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The plain optimizer (SGD) over the private module's parameters.
    noise_multiplier : float
        Noise std over the clipping bound.
    max_grad_norm : float
        Per-sample clipping bound.
    expected_batch_size : int
        ``q * N``: the sum of clipped gradients plus noise is divided by it (Opacus' convention).
    generator : torch.Generator, optional
        Noise generator (``None``: torch's global RNG).

    Attributes
    ----------
    steps_taken : int
        Clip + noise steps done.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        self.steps_taken = 0

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        """Turn the batch's per-sample gradients into per-sample loss gradients, then Opacus' clip + noise."""
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if gs is None:
                continue
            if isinstance(gs, list):
                gs = torch.cat(gs, dim=0)
            p.grad_sample = gs * gs.shape[0]
        done = super().pre_step(closure)
        if done:
            self.steps_taken += 1
        return done


@dataclass
class DeviceDP:
    """DP-SGD settings of one side for one round; :meth:`wrap` makes a module and its optimizer private.

    Attributes
    ----------
    noise_multiplier, max_grad_norm : float
        DP-SGD noise and clipping bound.
    expected_batch_size : int
        ``q * N``.
    sample_rate : float
        ``q`` (for the attached accountant).
    generator : torch.Generator, optional
        Noise generator.
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    sample_rate: float
    generator: torch.Generator | None = None

    def wrap(
        self, module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[BatchDPOptimizer, GradSampleHooks, RDPAccountant]:
        """Attach hooks to ``module`` and wrap ``optimizer``; return ``(dp_optimizer, hooks, accountant)`` where the
        accountant (fresh) counts this wrapper's steps."""
        hooks = make_private(module)
        dp_opt = BatchDPOptimizer(
            optimizer, self.noise_multiplier, self.max_grad_norm, self.expected_batch_size, self.generator
        )
        accountant = RDPAccountant()
        dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(self.sample_rate))
        return dp_opt, hooks, accountant
