"""FedProx's proximal term as part of the optimizer, so that it splits across the device and the edge server.

FedProx (Li et al., MLSys 2020) minimises ``loss(w) + mu / 2 * ||w - w_global||^2``. The term is a sum over
parameters, so its gradient ``mu * (w - w_global)`` is per parameter: the device adds it for the head's
parameters, the edge server for the tail's, and split training equals FedProx on the whole model. Flower's
``FedProx`` strategy sends ``mu`` to the nodes as the train config's ``"proximal-mu"``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ProximalSGD", "sgd"]


class ProximalSGD(torch.optim.SGD):
    """SGD on ``loss + mu / 2 * ||w - w0||^2``; ``w0`` is the parameters' value when the optimizer is built.

    Parameters
    ----------
    params : iterable of nn.Parameter
        The parameters (their current values become ``w0``: build it at the start of the round).
    lr, momentum, weight_decay : float
        As for ``torch.optim.SGD``.
    proximal_mu : float
        FedProx's ``mu`` (>= 0).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        proximal_mu: float = 0.0,
    ) -> None:
        params = list(params)
        if not proximal_mu >= 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.proximal_mu = float(proximal_mu)
        self.anchor = {p: p.detach().clone() for p in params}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        """Add ``mu * (w - w0)`` to every gradient, then take the SGD step."""
        if self.proximal_mu:
            for p, p0 in self.anchor.items():
                if p.grad is not None:
                    p.grad.add_(p - p0, alpha=self.proximal_mu)
        return super().step(closure)


def sgd(
    params: Iterable[nn.Parameter],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
) -> torch.optim.SGD:
    """Plain SGD, or :class:`ProximalSGD` when ``proximal_mu > 0``."""
    if proximal_mu:
        return ProximalSGD(params, lr, momentum, weight_decay, proximal_mu)
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)
