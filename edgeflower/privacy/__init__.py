"""Differential privacy (DP-SGD with Opacus) for classic, split and pipelined training, with cumulative accounting.

One concept per module:

* :mod:`~edgeflower.privacy.settings` -- the DP run-config values, their validation and noise calibration;
* :mod:`~edgeflower.privacy.models` -- BatchNorm conversion (or refusal) and Opacus compatibility of a model;
* :mod:`~edgeflower.privacy.sampling` -- Poisson sampling of batches from the OS's CSPRNG (what amplification by
  subsampling assumes);
* :mod:`~edgeflower.privacy.dpsgd` -- per-sample gradients (Opacus hooks) and one clip + noise step per batch;
* :mod:`~edgeflower.privacy.accounting` -- the accountant history kept in Flower's ``context.state`` (one
  subsampled Gaussian per step in every mode; Opacus' RDP or PRV accountant);
* :mod:`~edgeflower.privacy.node` -- a node's DP round: sampling, the device's DP-SGD, the budget check and, for
  ``dp = full``, the tail's DP parameters (``NodeRoundDP.tail_params``) that
  :meth:`EdgeClient.open_session(..., dp=...) <edgeflower.transport.client.EdgeClient.open_session>` sends;
* :mod:`~edgeflower.privacy.strategy` -- a strategy wrapper that skips nodes whose budget is exhausted, and central
  DP (Flower's own wrappers with Flower's own ``RdpAccountant``, a clean stop at the budget) for the ServerApp;
* :mod:`~edgeflower.privacy.summary` -- the run's privacy summary (epsilon spent per node and round).
"""

from importlib import import_module as _import_module
from typing import Any as _Any

_EXPORTS = {
    "PrivacyHistory": "accounting",
    "BatchDPOptimizer": "dpsgd",
    "DeviceDP": "dpsgd",
    "make_private": "dpsgd",
    "prepare_model": "models",
    "NodeRoundDP": "node",
    "PoissonBatches": "sampling",
    "DP_MODES": "settings",
    "DPSettings": "settings",
    "load_opacus": "_opacus",
}
"""Public names and their modules, imported on first use (PEP 562): a run without DP never imports Opacus."""


def __getattr__(name: str) -> _Any:
    if name in _EXPORTS:
        return getattr(_import_module(f"edgeflower.privacy.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgeflower.privacy' has no attribute {name!r}")


__all__ = [
    "DP_MODES",
    "BatchDPOptimizer",
    "DPSettings",
    "DeviceDP",
    "NodeRoundDP",
    "PoissonBatches",
    "PrivacyHistory",
    "load_opacus",
    "make_private",
    "prepare_model",
]
