"""DP-SGD on a module: Opacus' per-sample gradient hooks and one clip + noise step per batch.

:func:`make_private` attaches Opacus' :class:`~opacus.grad_sample.GradSampleHooks` to a module *without wrapping
it* (so its state dict never gains Opacus' ``_module.`` prefix). The hooks compute per-sample gradients from the
activations and the gradient flowing back into the module, so they work when the backward pass is driven by an
external gradient (a split head's ``act.backward(grad)``) just as for a loss.

:class:`BatchDPOptimizer` is Opacus' :class:`~opacus.optimizers.DPOptimizer` (clip each sample's gradient to
``max_grad_norm`` over *all* the module's parameters, sum, add ``N(0, (noise_multiplier * max_grad_norm)^2)``,
divide by the expected batch size) with one difference: our losses are the mean over the *whole batch*, possibly
back-propagated in several micro-batches (pipelined training scales micro-batch ``j``'s mean loss by
``n_j / B``), so the hooks hold ``g_i / n`` for a batch of ``n`` samples. Before clipping it concatenates the
micro-batches' per-sample gradients (a pipelined batch only), and clipping treats each of them as ``n`` times
itself -- each sample's own loss gradient -- without materialising that product: the per-sample norms are scaled
by ``n`` and so are the clip factors that weigh the sum (no copy of the per-sample gradients). So clipping is per
*sample* over the whole batch, and there is exactly one clip + noise step per batch however it was cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeflower.privacy._opacus import load_opacus
from edgeflower.privacy.models import prepare_model

load_opacus()  # before the first Opacus import below: its logging side effect is undone there
from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.grad_sample import GradSampleHooks  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed  # noqa: E402

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

    def clip_and_accumulate(self) -> None:
        """Opacus' clipping of the per-sample loss gradients ``n * g_i`` with the factor ``n`` folded in.

        ``||n g_i|| = n ||g_i||`` and ``sum_i c_i (n g_i) = sum_i (n c_i) g_i``: the same result as scaling the
        per-sample gradients first, without a copy of them.
        """
        samples = self.grad_samples
        n = len(samples[0])
        if n == 0:
            factor = torch.zeros((0,), device=samples[0].device)
        else:
            norms = torch.stack([g.reshape(n, -1).norm(2, dim=-1) for g in samples], dim=1).norm(2, dim=1)
            factor = (self.max_grad_norm / (norms * n + 1e-6)).clamp(max=1.0) * n
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            gs = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", factor.to(device=gs.device, dtype=p.dtype), gs)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        """Join a pipelined batch's micro-batches (one clip + noise step per batch), then Opacus' clip + noise."""
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, list):
                p.grad_sample = torch.cat(gs, dim=0)
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
